"""The analytic first step through the flows: the pipeline's first-step variants, the distill and sample stages."""

import torch

import dode
from dode.common.images import to_uint8
from dode.core.grids import GridSpec
from dode.core.rng import seeded_noise
from dode.models import load_model
from dode.store.gaussians import load_gaussian
from dode.store.lambdas import load_lambdas
from dode.store.registry import Registry
from dode.store.samples import load_samples

SMALL = {"model": "mixture-smooth", "solvers": ("dpmpp_2m",), "nfes": (3,),
         "teacher": {"factor": 4, "n_samples": 48, "batch_size": 32}, "sampling": {"n_samples": 64, "batch_size": 32},
         "variants": {"analytic λ": {"objective": "step", "first_step": "analytic"},
                      "flowmap λ": {"objective": "step", "first_step": "flowmap"}}}


def test_pipeline_fits_and_samples_first_step_variants_at_the_cells_network_calls(prefect_harness, tmp_path):
    from dode_flows.pipeline import pipeline_flow

    reg = Registry(tmp_path / "registry")
    result = pipeline_flow(config=SMALL, registry=reg.uri)
    (row,) = [r for r in result["rows"] if r["metric"] == "fd-pixels"]
    assert set(row["variants"]) == {"analytic λ", "flowmap λ", "base+analytic", "base+flowmap"}
    (gauss,) = reg.list("gaussian")
    model = load_model("mixture-smooth")
    assert load_gaussian(reg, gauss).model == model.fingerprint
    fits = {a.params.get("first_step", "network"): a for a in reg.list("lambdas")}
    assert set(fits) == {"network", "analytic", "flowmap"}
    for kind, art in fits.items():
        lam = load_lambdas(reg, art)
        assert art.params["nfe"] == 3 and (lam.first.kind if lam.first else "network") == kind
        assert (gauss.id in art.parents) == (kind != "network")
    # The stored analytic samples are dode.sample's with the lambdas' own first step, from the same seeds.
    lam = load_lambdas(reg, fits["analytic"])
    job = next(a for a in reg.list("samples") if a.params.get("job", {}).get("lambdas_id") == fits["analytic"].id)
    x = dode.sample(model.denoiser, seeded_noise(range(64), model.shape), torch.tensor(lam.sigmas, dtype=torch.float64), "dpmpp_2m", lam)
    assert (load_samples(reg, job).astype(int) - to_uint8(x).astype(int)).__abs__().max() <= 1


def test_distill_and_sample_stages_take_a_first_step(prefect_harness, tmp_path):
    from dode_flows.stages import distill_flow, sample_flow

    uri = str(tmp_path / "registry")
    teacher = {"factor": 4, "n_samples": 32, "batch_size": 32}
    out = distill_flow(config={"solver": "euler", "nfe": 2, "first_step": "analytic", "teacher": teacher}, registry=uri)
    reg = Registry(uri)
    lam = load_lambdas(reg, out["lambdas"])
    assert lam.nfe == 3 and lam.first.kind == "analytic" and len(lam.sigmas) == 4
    assert reg.get(out["trajectory"]).params["grid"] == GridSpec.for_calls("karras", "euler", 2, "analytic").to_dict()
    sampling = {"n_samples": 32, "batch_size": 32}
    base = sample_flow(config={"solver": "euler", "nfe": 2, "first_step": "analytic", "gaussian": out["gaussian"],
                               "sampling": sampling}, registry=uri)
    assert reg.get(base).params["job"]["grid"]["steps"] == 3
    with_lambdas = sample_flow(config={"lambdas": out["lambdas"], "sampling": sampling}, registry=uri)
    assert reg.get(with_lambdas).params["job"]["lambdas_id"] == out["lambdas"]
