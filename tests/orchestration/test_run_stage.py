"""Issue 18 item 1: the library and `dode run` are one code path -- the same configuration gives the same lambdas."""

import numpy as np

import dode
from dode.common.config import build
from dode.models import load_model
from dode.pipeline.runs import DistillRun
from dode.store.lambdas import load_lambdas
from dode.store.registry import Registry

CONFIG = {"model": "mixture-smooth", "solver": "euler", "nfe": 4, "teacher": {"n_samples": 64}}


def test_dode_run_distill_gives_the_lambdas_of_dode_distill(prefect_harness, tmp_path):
    from dode_flows.cli import run_stage

    reg = Registry(tmp_path / "registry")
    out = run_stage("distill", {"config": CONFIG, "registry": reg.uri})
    run, m = build(DistillRun, CONFIG), load_model(CONFIG["model"])
    direct = dode.distill(m.denoiser, run.teacher.noise(m.shape), run.grid.sigmas(m.denoiser), run.solver, run.teacher,
                          run.fit)
    stored = load_lambdas(reg, out["lambdas"])
    # The flow's teacher runs in batches and is stored in float32: close, not bit-identical by construction.
    np.testing.assert_allclose(stored.values, direct.values, rtol=1e-6)
    assert stored.guard.get("chosen") == direct.guard.get("chosen")
    assert reg.get(out["lambdas"]).params["fit"] == run.fit.model_dump()
