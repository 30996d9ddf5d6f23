"""The distill-pipeline stage (issue 28 item 5): a diffusers pipeline folder's prompt-distilled lambdas through the
flow `dode-distill-pipeline` are those `distill_pipeline` fits directly, registered as `dode distill-pipeline`
registers them, and found again by a rerun; `dode run distill-pipeline` takes the configuration's options."""

import numpy as np
import pytest

from dode.common.config import build
from dode.integrations.diffusers.distill import distill_pipeline, load_pipeline, pipeline_lambdas_params
from dode.pipeline import steps
from dode.pipeline.runs import PromptDistillRun
from dode.store.lambdas import load_lambdas
from dode.store.registry import Registry
from tests.test_diffusers_scheduler import tiny_sd_pipeline

PROMPTS = ["a cat, asleep", "dog"]  # a comma inside a prompt stays in it
FIT = {"solver": "euler", "nfe": 3, "guidance_scale": 2.0, "samples_per_prompt": 2, "teacher": {"factor": 2}}


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A tiny Stable Diffusion pipeline saved as a diffusers folder (float32)."""
    path = tmp_path_factory.mktemp("sd") / "pipe"
    tiny_sd_pipeline().save_pretrained(path)
    return path


def test_the_stage_registers_the_lambdas_distill_pipeline_fits_and_a_rerun_finds_them(prefect_harness, sd_folder,
                                                                                       tmp_path, monkeypatch):
    from dode_flows.cli import run_stage

    reg = Registry(tmp_path / "registry")
    config = {**FIT, "pipeline": str(sd_folder), "prompts": PROMPTS}
    out = run_stage("distill-pipeline", {"config": config, "registry": reg.uri})
    run = build(PromptDistillRun, config)
    direct = distill_pipeline(load_pipeline(str(sd_folder), "cpu"), PROMPTS, run.distillation)
    art = reg.get(out["lambdas"])
    stored = load_lambdas(reg, art)
    np.testing.assert_allclose(stored.values, direct.values, rtol=1e-6)
    np.testing.assert_allclose(out["values"], direct.values, rtol=1e-6)
    assert stored.guard["chosen"] == direct.guard["chosen"] and stored.nfe == 3
    assert art.key == f"pipeline/{sd_folder}/euler/nfe3" and art.params["n_prompts"] == 2
    assert art.params["grid"] == run.grid.to_dict() and art.params["teacher"] == direct.teacher
    lookup = pipeline_lambdas_params(str(sd_folder), run.distillation, PROMPTS)  # what `dode distill-pipeline` records
    assert {k: art.params[k] for k in lookup} == lookup and lookup["teacher_config"]["factor"] == 2

    # A rerun (the flow's, and the step's own registry lookup past the Prefect cache) fits nothing.
    def no_fit(*args, **kwargs):
        raise AssertionError("the lambdas were fitted again")

    monkeypatch.setattr(steps, "fit_pipeline", no_fit)
    assert run_stage("distill-pipeline", {"config": config, "registry": reg.uri})["lambdas"] == art.id
    assert steps.distill_pipeline(reg.uri, str(sd_folder), PROMPTS, run.distillation) == art.id
    assert [a.id for a in reg.find("lambdas")] == [art.id]
    with pytest.raises(AssertionError, match="fitted again"):  # another prompt set is another fit
        steps.distill_pipeline(reg.uri, str(sd_folder), [*PROMPTS, "bird"], run.distillation)


def test_dode_run_distill_pipeline_lists_the_configurations_options(capsys):
    from dode_flows.cli import load_flow, nested, stage_parser

    from dode.cli import main

    with pytest.raises(SystemExit) as done:
        main(["run", "distill-pipeline", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    for option in ("--pipeline", "--prompts", "--device", "--solver", "--nfe", "--guidance-scale",
                   "--samples-per-prompt", "--teacher-factor", "--fit-objective", "--registry"):
        assert option in out, option
    flow = load_flow("distill-pipeline")
    argv = ["--pipeline", "sd", "--prompts", *PROMPTS, "--nfe", "3", "--teacher-factor", "2"]
    params = nested(vars(stage_parser("distill-pipeline", flow).parse_args(argv)), flow)
    assert params == {"config": {"pipeline": "sd", "prompts": PROMPTS, "nfe": 3, "teacher": {"factor": 2}}}


@pytest.mark.parametrize(("prompts", "message"), [
    ([""], "PromptDistillRun: prompts.0: String should have at least 1 character"),
    (["x" * 2001], "PromptDistillRun: prompts.0: String should have at most 2000 characters"),
    ([f"p{i}" for i in range(1001)], "PromptDistillRun: prompts: Tuple should have at most 1000 items"),
])
def test_a_bad_prompts_list_is_one_line_before_any_run(prompts, message, sd_folder, tmp_path, capsys):
    from dode.cli import main

    registry = tmp_path / "registry"
    argv = ["run", "distill-pipeline", "--pipeline", str(sd_folder), "--prompts", *prompts, "--registry", str(registry)]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert line.startswith(f"dode run: error: {message}") and out == ""
    assert not registry.exists()  # nothing ran
