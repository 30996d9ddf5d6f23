"""Every option typed once: the choices are the registries' (``Literal`` types, shown as choices in Prefect's
run form), booleans and integers are strict in every configuration, a configuration past a stated budget is
refused, and each default lives in one place (no literal default choice outside the configuration modules)."""

import re
from pathlib import Path
from typing import Annotated, get_args

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from dode.common.config import build
from dode.core.gaussian import FIRST_STEPS
from dode.core.grids import FAMILIES
from dode.core.solvers import SOLVERS
from dode.distillation.config import (
    FAMILY,
    FIRST_STEP,
    STUDENT_SOLVER,
    Family,
    FirstStepKind,
    FitConfig,
    ObjectiveName,
    ObjectiveOptions,
    Solver,
)
from dode.distillation.first_step import GaussianConfig, GaussianRun
from dode.distillation.objectives import OBJECTIVES, options_model
from dode.distillation.objectives.final import DTYPES, INITS, OPTIMIZERS, FinalOptions
from dode.distillation.teacher import TeacherConfig
from dode.integrations.diffusers.distill import PipelineDistillConfig
from dode.pipeline import runs
from dode.pipeline.generate import SamplingConfig, SamplingJob
from dode.pipeline.sweep import Variant

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [*runs.STAGES.values(), runs.ScoringConfig, TeacherConfig, FitConfig, SamplingConfig, SamplingJob,
           GaussianConfig, GaussianRun, PipelineDistillConfig, Variant, *{options_model(n) for n in OBJECTIVES}]


def test_the_choices_are_the_registries():
    assert get_args(Solver) == tuple(SOLVERS)
    assert get_args(Family) == tuple(f for f in FAMILIES if f != "explicit")  # an explicit grid: its sigmas
    assert get_args(FirstStepKind) == FIRST_STEPS
    assert get_args(ObjectiveName) == tuple(OBJECTIVES)
    assert set(get_args(ObjectiveOptions)) == {options_model(n) for n in OBJECTIVES}
    fields = FinalOptions.model_fields
    assert (get_args(fields["dtype"].annotation), get_args(fields["init"].annotation),
            get_args(fields["optimizer"].annotation)) == (tuple(DTYPES), INITS, OPTIMIZERS)
    assert (STUDENT_SOLVER, FAMILY, FIRST_STEP) == ("euler", "karras", "network")


def test_the_run_form_offers_the_choices():
    schema = runs.DistillRun.model_json_schema()
    assert schema["properties"]["solver"]["enum"] == list(SOLVERS)
    assert schema["properties"]["first_step"]["enum"] == list(FIRST_STEPS)
    assert schema["$defs"]["FitConfig"]["properties"]["objective"]["enum"] == list(OBJECTIVES)
    assert schema["$defs"]["FinalOptions"]["properties"]["dtype"]["enum"] == list(DTYPES)


def lax_values(kinds: set[str], items: set[str]) -> list:
    """Values a lax validator would coerce into the field's type."""
    out = []
    if "integer" in kinds:
        out += [True, "3", 3.0]
    if "boolean" in kinds:
        out += ["false", "no", 1, 0]
    if "number" in kinds:
        out += [True, "0.5"]
    if "array" in kinds and "integer" in items:
        out += [[True], ["3"]]
    return out


def typed_fields():
    for config in CONFIGS:
        for name, field in config.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                continue
            adapter = TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)
            schema = adapter.json_schema()
            kinds = {s.get("type") for s in schema.get("anyOf", [schema])}
            items = {s.get("items", {}).get("type") for s in schema.get("anyOf", [schema])}
            for value in lax_values(kinds, items):
                yield pytest.param(adapter, value, id=f"{config.__name__}.{name}={value!r}")


@pytest.mark.parametrize(("adapter", "value"), list(typed_fields()))
def test_booleans_and_integers_are_strict_in_every_configuration(adapter, value):
    with pytest.raises(ValidationError):
        adapter.validate_python(value)


@pytest.mark.parametrize(("config", "value", "message"), [
    (runs.DistillRun, {"teacher": {"factor": True}}, "teacher.factor: Input should be a valid integer"),
    (runs.DistillRun, {"fit": {"objective": "final", "options": {"learn_sigmas": "false"}}},
     "fit.options: objective 'final': learn_sigmas: Input should be a valid boolean"),
    (runs.PipelineRun, {"variants": {"v": {"objective": "final", "options": {"activation_checkpointing": "no"}}}},
     "variants.v.options: objective 'final': activation_checkpointing: Input should be a valid boolean"),
    (runs.DistillRun, {"nfe": 100_000, "teacher": {"factor": 1000}}, "above the bound of 100,000"),
    (runs.TeacherRun, {"steps": 10_000, "teacher": {"factor": 20}}, "above the bound of 100,000"),
    (runs.DistillRun, {"nfe": 100, "teacher": {"n_samples": 100_000}}, "above the bound of 2,000,000"),
    (PipelineDistillConfig, {"nfe": 50_000, "teacher": {"factor": 10}}, "above the bound of 100,000"),
    (GaussianRun, {"model": "gaussian", "n_samples": 10**9}, "n_samples: Input should be less than or equal to"),
])
def test_a_wrong_type_or_a_run_past_its_budget_is_refused(config, value, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        build(config, value)
    assert "\n" not in str(err.value)


def test_the_typed_options_record_what_was_given():
    # A fit records (and registry keys hold) the options given, as the untyped dict did.
    fit = build(FitConfig, {"objective": "final", "options": {"iterations": 40, "learn_lambdas": False}})
    assert isinstance(fit.options, FinalOptions) and fit.options.micro_batch == 32
    assert fit.model_dump()["options"] == {"iterations": 40, "learn_lambdas": False}
    assert build(FitConfig, fit.model_dump()) == fit and FitConfig().model_dump()["options"] == {}
    assert build(FitConfig, {"objective": "final"}).options == FinalOptions()


def test_sampling_jobs_are_the_sampling_configuration():
    assert set(SamplingConfig.model_fields) - {"num_shards"} <= set(SamplingJob.model_fields)
    job = SamplingJob(model="gaussian", solver="euler", grid={"family": "karras", "steps": 3})
    assert job.batch_size == SamplingConfig().batch_size and job.n_samples == SamplingConfig().n_samples
    assert SamplingJob.from_dict(job.to_dict()) == job
    assert GaussianRun(model="gaussian").n_samples == 2000  # one default: the CLI's and the flows' Gaussian


# Literal default choices, as a default (an argument's, a field's, a dict lookup's), outside the configuration.
DEFAULT = re.compile(r"""(?:default=|\w\s*:\s*[\w|. \[\]]+=\s*|\.get\([^()\n]*,\s*|Field\(\s*|^\s*\w+\s*=\s*|\bor\s+)"""
                     r"""["'](euler|dpmpp_2m|network|karras)["']""", re.MULTILINE)
CONFIGURATION = {"dode/distillation/config.py", "dode/distillation/teacher.py", "dode/distillation/first_step.py",
                 "dode/pipeline/runs.py", "dode/pipeline/generate.py", "dode/integrations/diffusers/distill.py",
                 "dode/core/gaussian.py"}  # core/gaussian.py: NETWORK, the first step's own name


def test_no_default_choice_is_written_outside_the_configuration():
    files = [p for folder in ("dode", "flows") for p in (ROOT / folder).rglob("*.py")]
    found = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in files
             if str(p.relative_to(ROOT)) not in CONFIGURATION and "dode/core/solvers" not in str(p)  # their names
             for m in DEFAULT.finditer(p.read_text())]
    assert not found, found


def test_library_defaults_are_the_configurations():
    import inspect

    from dode.distillation.teacher_parquet import write_teacher

    assert inspect.signature(write_teacher).parameters["solver"].default == TeacherConfig().solver == "dpmpp_2m"


def restated(value: dict, config: type[BaseModel], where: str) -> list[str]:
    """The choices of a deployment's configuration that restate the configuration's default."""
    out = []
    for key, given in value.items():
        field = config.model_fields[key]
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += restated(given, field.annotation, f"{where}.{key}")
        elif key in ("solver", "family", "first_step", "objective") and given == field.default:
            out.append(f"{where}.{key}: {given}")
    return out


def test_the_deployments_restate_no_default_choice():
    from dode_flows import cli

    stages = {cli.entrypoint(stage): runs.STAGES[stage] for stage in cli.STAGES}
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    found = [line for d in spec["deployments"]
             for line in restated(d["parameters"]["config"], stages[d["entrypoint"]], d["name"])]
    assert not found, found
