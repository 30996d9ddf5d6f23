"""`dode gaussian` and `dode sample --first-step`: network calls counted by --nfe, lambdas imply the first step."""

import numpy as np
import pytest
import torch

import dode
from dode.cli import main
from dode.common.images import to_uint8
from dode.core.gaussian import FirstStep
from dode.core.grids import GridSpec
from dode.core.rng import seeded_noise
from dode.models import load_model
from dode.store.gaussians import load_gaussian
from dode.store.lambdas import save_lambdas
from dode.store.registry import Registry
from dode.store.samples import load_samples


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


@pytest.fixture
def gaussian(tmp_path, capsys):
    reg = tmp_path / "reg"
    code, out, err = run(capsys, "gaussian", "--model", "mixture-smooth", "--n-samples", "300", "--steps", "8",
                         "--registry", str(reg))
    assert code == 0, err
    return Registry(reg), out


def test_gaussian_artifact_is_the_models_own_and_samples_with_three_calls(gaussian, capsys):
    reg, gid = gaussian
    model = load_model("mixture-smooth")
    gauss = load_gaussian(reg, gid, model=model.fingerprint)
    assert gauss.model == model.fingerprint and gauss.source["n"] == 300 and gauss.rank == 64
    assert reg.get(gid).params["model_fingerprint"] == model.fingerprint
    code, out, err = run(capsys, "sample", "--model", "mixture-smooth", "--solver", "dpmpp_2m", "--nfe", "3",
                         "--first-step", "analytic", "--gaussian", gid[:10], "--sampling-n-samples", "16",
                         "--sampling-batch-size", "16",
                         "--registry", reg.uri, "--quiet")
    assert code == 0, err
    art = reg.get(out)
    assert art.params["job"]["grid"]["steps"] == 4 and art.params["job"]["gaussian_id"] == gid
    sigmas = GridSpec.for_calls("karras", "dpmpp_2m", 3, "analytic").sigmas(model.denoiser)
    x = dode.sample(model.denoiser, seeded_noise(range(16), model.shape), sigmas, "dpmpp_2m",
                    first=FirstStep("analytic", gauss))
    assert np.abs(load_samples(reg, art).astype(int) - to_uint8(x).astype(int)).max() <= 1


def test_lambdas_imply_their_first_step(gaussian, capsys):
    reg, gid = gaussian
    model = load_model("mixture-smooth")
    first = FirstStep("analytic", load_gaussian(reg, gid))
    sigmas = GridSpec.for_calls("karras", "euler", 2, "analytic").sigmas(model.denoiser)
    noise = torch.randn(16, *model.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam = dode.distill(model.denoiser, noise, sigmas, "euler", fit={"guard": False}, first=first)
    art = save_lambdas(reg, lam, "cli/first", params={"grid": GridSpec.explicit(lam.sigmas).to_dict()})
    code, out, err = run(capsys, "sample", "--model", "mixture-smooth", "--lambdas", art.id, "--nfe", "2",
                         "--sampling-n-samples", "8", "--sampling-batch-size", "8", "--registry", reg.uri, "--quiet")
    assert code == 0, err
    assert reg.get(out).params["job"]["lambdas_id"] == art.id
    code, _, err = run(capsys, "sample", "--model", "mixture-smooth", "--lambdas", art.id, "--nfe", "3",
                       "--registry", reg.uri)
    assert code == 2 and "drop nfe 3 (they imply 2)" in err
    code, _, err = run(capsys, "sample", "--model", "mixture-smooth", "--lambdas", art.id, "--gaussian", gid,
                       "--registry", reg.uri)
    assert code == 2 and "drop sigmas and gaussian" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--first-step", "analytic"], "needs a gaussian artifact id"),
    (["--gaussian", "abc"], "and only it takes one"),
    (["--first-step", "teleport", "--gaussian", "abc"], "invalid choice"),
])
def test_first_step_options_are_checked(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "sample", "--model", "mixture-smooth", "--solver", "euler", "--nfe", "3", *argv,
                       "--registry", str(tmp_path))
    assert code == 2 and message in err


def test_a_gaussian_of_another_model_is_refused(gaussian, capsys):
    reg, gid = gaussian
    with pytest.raises(ValueError, match="approximates model .* not the model being sampled"):
        load_gaussian(reg, gid, model="0" * 64)
    assert load_gaussian(reg, gid, model="0" * 64, allow_other_model=True).dim == 64
    code, _, err = run(capsys, "sample", "--model", "mixture-digits", "--solver", "euler", "--nfe", "3",
                       "--first-step", "analytic", "--gaussian", gid, "--sampling-n-samples", "4",
                       "--registry", reg.uri)
    assert code == 2 and "approximates model" in err


def test_the_flows_reuse_a_gaussian_of_the_same_model_and_size(tmp_path, capsys):
    # Issue 28: the pipeline's Gaussian step takes one `dode gaussian` made (other seeds), not a fit of its own.
    from dode.distillation.first_step import GaussianConfig
    from dode.distillation.teacher import TeacherConfig
    from dode.pipeline import steps

    reg = tmp_path / "reg"
    size = ["--n-samples", str(GaussianConfig().n_samples), "--registry", str(reg)]
    code, made, err = run(capsys, "gaussian", "--model", "mixture-smooth", *size)
    assert code == 0, err
    model_id = steps.register_model(str(reg), "mixture-smooth")
    assert steps.gaussian(str(reg), model_id, TeacherConfig()) == made
    code, other, err = run(capsys, "gaussian", "--model", "gaussian", "--steps", "3", *size)
    assert code == 0 and other != made  # another model's is not taken
    assert len(Registry(reg).list("gaussian")) == 2
