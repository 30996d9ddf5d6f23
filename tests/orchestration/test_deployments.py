"""prefect.yaml and `dode run` without a server: every deployment loads, its parameters build its stage's
configuration, its schedules parse; every configuration field is a `dode run` option, derived from the
configuration (declared once, in dode.pipeline.runs)."""

import inspect
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from dode_flows import cli
from pydantic import BaseModel

from dode.common.config import build
from dode.distillation.teacher import TeacherConfig
from dode.pipeline import runs
from dode.pipeline.report import SPREAD_NOTE

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
DEPLOYMENTS = SPEC["deployments"]
STAGE_OF = {cli.entrypoint(stage): stage for stage in cli.STAGES}  # the flow named "dode-<stage>"


def config_fields(config: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field of a configuration, its parts' as ``part.field``, recursively."""
    out = set()
    for name, field in config.model_fields.items():
        part = field.annotation
        nested = isinstance(part, type) and issubclass(part, BaseModel)
        out |= config_fields(part, f"{prefix}{name}.") if nested else {f"{prefix}{name}"}
    return out


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_loads_and_builds_its_stage_configuration(dep, monkeypatch, root):
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(root)
    flow = load_flow_from_entrypoint(dep["entrypoint"])
    stage = runs.STAGES[STAGE_OF[dep["entrypoint"]]]
    params = dep.get("parameters", {})
    assert set(params) <= set(inspect.signature(flow.fn).parameters)
    config = build(stage, params["config"])  # rules and defaults, as `dode run` builds it
    assert flow.validate_parameters(params)["config"] == config  # as the server checks the deployment's parameters
    assert dep["work_pool"]["name"] == "dode-process"
    for s in dep.get("schedules", []):
        if "cron" in s:
            CronSchedule(cron=s["cron"], timezone=s["timezone"])
        else:
            IntervalSchedule(interval=timedelta(seconds=s["interval"]), anchor_date=s["anchor_date"],
                             timezone=s["timezone"])


def test_prefect_yaml_matches_the_cli_schema_and_covers_every_stage():
    from prefect.cli.deploy._models import PrefectYamlModel  # private model of prefect 3.9's `prefect deploy`

    PrefectYamlModel.model_validate(SPEC)
    assert {STAGE_OF[d["entrypoint"]] for d in DEPLOYMENTS} == set(cli.STAGES) == set(runs.STAGES)
    kinds = {k for d in DEPLOYMENTS for s in d.get("schedules", []) for k in ("cron", "interval") if k in s}
    assert kinds == {"cron", "interval"}


def test_every_deployment_fits_with_the_libraries_default_teacher_solver():
    # One teacher per student grid serves every solver: its solver is the library's default everywhere.
    configs = [build(runs.STAGES[STAGE_OF[d["entrypoint"]]], d["parameters"]["config"]) for d in DEPLOYMENTS]
    teachers = [c.teacher for c in configs if "teacher" in type(c).model_fields]
    # six deployments here have a teacher (a newcomer's stage may add one: not counted exactly)
    assert len(teachers) >= 6 and {t.solver for t in teachers} == {TeacherConfig().solver} == {"dpmpp_2m"}


def test_a_bad_parameter_is_rejected_before_any_run(monkeypatch, root):
    from prefect.exceptions import ParameterTypeError
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(root)
    flow = load_flow_from_entrypoint("dode_flows.pipeline:pipeline_flow")
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters({"config": {"nfes": "many"}})
    with pytest.raises(ValueError, match="solvers.0: Input should be 'euler', 'heun'"):
        build(runs.PipelineRun, {"solvers": ["rk45"]})
    with pytest.raises(ValueError, match="heun makes odd NFEs only"):
        build(runs.PipelineRun, {"solvers": ["heun"], "nfes": [4]})
    with pytest.raises(ValueError, match="fit.objective: Input should be 'step' or 'final'"):
        build(runs.DistillRun, {"fit": {"objective": "adamw"}})
    with pytest.raises(ValueError, match=r"PipelineRun: nfes: Input should be a valid tuple"):
        cli.run_stage("pipeline", {"config": {"nfes": "many"}})  # one error, before any run
    with pytest.raises(ValueError, match=r"pipeline: .*dask"):
        cli.run_stage("pipeline", {"config": {}, "dask": "often"})  # Prefect's type check of the other parameters


@pytest.mark.parametrize(("config", "argv", "message"), [
    ({"fit": {"holdout": 2}}, ["--fit-holdout", "2"], "DistillRun: fit.holdout: Input should be less than 1"),
    ({"teacher": {"alignment": "official", "solver": "dpmpp_2m"}},
     ["--teacher-alignment", "official", "--teacher-solver", "dpmpp_2m"],
     "DistillRun: teacher: official alignment uses the reference code's Euler teacher; drop the teacher solver"),
    ({"fit": {"objective": "final", "options": {"iterationz": 3}}},
     ["--fit-objective", "final", "--fit-options", "iterationz=3"],
     "DistillRun: fit.options: objective 'final' has no option(s) ['iterationz']"),
    ({"fit": {"objective": "final", "options": {"learn_sigmas": "false"}}},
     ["--fit-objective", "final", "--fit-options", '{"learn_sigmas": "false"}'],
     "DistillRun: fit.options: objective 'final': learn_sigmas: Input should be a valid boolean"),
    ({"fit": {"objective": "final", "options": {"max_fit": True}}}, ["--fit-objective", "final", "--fit-options",
     "max_fit=true"], "DistillRun: fit.options: objective 'final': max_fit: Input should be a valid integer"),
    ({"nfe": 100_000, "teacher": {"factor": 1000}}, ["--nfe", "100000", "--teacher-factor", "1000"],
     "DistillRun: the teacher would run 100000 student steps x factor 1000 = 100000000 steps, above the bound"),
])
def test_bad_configuration_is_one_value_error_before_any_run(config, argv, message, tmp_path, capsys):
    from dode.cli import main

    registry = tmp_path / "registry"
    with pytest.raises(ValueError) as err:
        cli.run_stage("distill", {"config": config, "registry": str(registry)})
    assert err.value.args[0].startswith(message) and "\n" not in err.value.args[0]
    assert main(["run", "distill", *argv, "--registry", str(registry)]) == 2
    out, err_text = capsys.readouterr()
    assert err_text.strip().splitlines() == [f"dode run: error: {err.value.args[0]}"] and out == ""
    assert not registry.exists()  # nothing ran


@pytest.mark.parametrize("stage", sorted(cli.STAGES))
def test_every_configuration_field_is_a_described_cli_option(stage):
    flow = cli.load_flow(stage)
    parser = cli.stage_parser(stage, flow)
    options = {a.dest: a for a in parser._actions if a.dest != "help"}
    own = set(inspect.signature(flow.fn).parameters) - {cli.CONFIG}
    assert set(options) == config_fields(runs.STAGES[stage]) | own  # one option per field, derived
    assert all(a.help.strip() and not a.help.startswith(" (default") for a in options.values()), stage
    for dest, action in options.items():
        if "." in dest:
            assert f"--{dest.replace('.', '-').replace('_', '-')}" in action.option_strings


@pytest.mark.parametrize("stage", sorted(cli.STAGES))
def test_the_ui_form_of_a_flow_is_its_stage_configuration(stage):
    # Prefect's UI draws a run's form from the flow's parameter schema: the configuration and each of its parts,
    # every field described, the configuration's defaults prefilled.
    from prefect.utilities.callables import parameter_schema

    config = runs.STAGES[stage]
    schema = parameter_schema(cli.load_flow(stage).fn).model_dump()
    assert schema["properties"][cli.CONFIG]["$ref"] == f"#/definitions/{config.__name__}"
    models = [config, *(f.annotation for f in config.model_fields.values()
                        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel))]
    for model in models:
        form = schema["definitions"][model.__name__]["properties"]
        assert set(form) == set(model.model_fields), model.__name__
        assert all(p.get("description") for p in form.values() if "$ref" not in p), model.__name__  # parts: forms
    default = schema["properties"][cli.CONFIG].get("default")
    if default is not None:  # SampleRun has none: it needs a solver and nfe, or lambdas
        assert config.model_validate(default) == config()


def test_cli_options_parse_to_the_flow_parameters():
    flow = cli.load_flow("pipeline")
    args = ["--solver", "euler", "heun", "--nfe", "3", "5", "--nfes-by-solver", "heun=3,5", '{"euler": [4]}',
            "--nfes-by-solver", "ipndm=5", "--fit-objective", "final", "--fit-options", "iterations=3",
            "optimizer=adam", "--no-fit-guard", "--fit-holdout", "0.5", "--scoring-metrics", "rmse",
            "--teacher-n-samples", "64", "--teacher-first-seed", "7", "--sampling-n-samples", "32", "--dask"]
    params = cli.nested(vars(cli.stage_parser("pipeline", flow).parse_args(args)), flow)
    assert params == {"config": {"solvers": ["euler", "heun"], "nfes": [3, 5],
                                 "nfes_by_solver": {"heun": [3, 5], "euler": [4], "ipndm": [5]},
                                 "fit": {"objective": "final", "options": {"iterations": 3, "optimizer": "adam"},
                                         "guard": False, "holdout": 0.5},
                                 "scoring": {"metrics": ["rmse"]}, "teacher": {"n_samples": 64, "first_seed": 7},
                                 "sampling": {"n_samples": 32}}, "dask": True}
    config = build(runs.PipelineRun, params["config"])
    assert (config.teacher.n_samples, config.teacher.factor, config.fit.guard, config.sampling.batch_size) == (
        64, 10, False, 250)  # options left out take the configuration's defaults
    flow.validate_parameters({**params, "config": config})
    with pytest.raises(SystemExit):
        cli.stage_parser("pipeline", flow).parse_args(["--nfes-by-solver", "heun"])


def test_dode_run_rejects_bad_input_with_one_line(capsys):
    from dode.cli import main

    assert main(["run", "pipeline", "--solvers", "heun", "--nfe", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("dode run: error: PipelineRun: no solver in ['heun'] can make exactly the NFEs [4]; "
                    "heun makes odd NFEs only")]


def test_results_are_shown_by_their_shape():
    row = {"solver": "euler", "nfe": 3, "label": "RMSE to teacher", "base": 0.5, "dode": 0.25, "teacher": None,
           "change_pct": -50.0}
    assert cli.show({"rows": [row], "report": "r.md"}).splitlines()[2:] == [
        "euler        3  RMSE to teacher               0.5             0.25                —   -50.0%", "report: r.md"]
    spread = {**row, "spread": {"base": 0.01, "dode": 0.02}}  # scores over disjoint evaluation sets: mean ± sd
    assert cli.show({"rows": [spread], "report": "r.md"}).splitlines()[2:] == [
        "euler        3  RMSE to teacher        0.5 ± 0.01      0.25 ± 0.02                —   -50.0%",
        SPREAD_NOTE, "report: r.md"]
    assert cli.show([{"samples": "ab" * 32, "label": "FD-pixels", "value": 1.5, "n": 8}]) == (
        "abababababab  FD-pixels: 1.5  (n=8)")
    assert cli.show("0123abcd") == "0123abcd"


def test_the_deploy_commands_in_the_header_name_real_deployments():
    header = [line for line in (Path(__file__).resolve().parents[2] / "prefect.yaml").read_text().splitlines()
              if line.startswith("#")]
    named = [word for line in header for word in re.findall(r"--name (\S+)", line)]
    assert named and set(named) <= {d["name"] for d in DEPLOYMENTS}  # `prefect deploy --name` takes these
    pull = SPEC["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert any(f"{pull.strip('{} $')}=$PWD prefect --no-prompt deploy" in line for line in header)


def test_the_flows_package_carries_the_deployments():
    from dode_flows import PREFECT_YAML

    assert yaml.safe_load(PREFECT_YAML.read_text()) == SPEC
