"""prefect.yaml and `dode run` without a server: every deployment loads, its parameters validate, its
schedules parse; every flow parameter is a `dode run` option, read from the flow (declared once)."""

import inspect
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from dode.checks import check_distill, check_pipeline
from flows import cli

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
DEPLOYMENTS = SPEC["deployments"]
STAGE_OF = {entrypoint: stage for stage, (entrypoint, _) in cli.STAGES.items()}


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_loads_and_its_parameters_validate(dep, monkeypatch, root):
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(root)
    flow = load_flow_from_entrypoint(dep["entrypoint"])
    params = dep.get("parameters", {})
    flow.validate_parameters(params)  # types, as the server checks them
    cli.STAGES[STAGE_OF[dep["entrypoint"]]][1](_bound(flow, params))  # choices and ranges, as `dode run` checks
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
    assert {STAGE_OF[d["entrypoint"]] for d in DEPLOYMENTS} == set(cli.STAGES)
    kinds = {k for d in DEPLOYMENTS for s in d.get("schedules", []) for k in ("cron", "interval") if k in s}
    assert kinds == {"cron", "interval"}


def test_a_bad_parameter_is_rejected_before_any_run(monkeypatch, root):
    from prefect.exceptions import ParameterTypeError
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(root)
    flow = load_flow_from_entrypoint("flows.pipeline:pipeline_flow")
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters({"nfes": "many"})
    with pytest.raises(ValueError, match="unknown solver 'rk45'; choose one of"):
        check_pipeline(_bound(flow, {"solvers": ["rk45"]}))
    with pytest.raises(ValueError, match="heun makes odd NFEs only"):
        check_pipeline(_bound(flow, {"solvers": ["heun"], "nfes": [4]}))
    with pytest.raises(ValueError, match="unknown objective 'adamw'; choose one of"):
        check_distill(_bound(cli.load_flow("distill"), {"objective": "adamw"}))
    with pytest.raises(ValueError, match=r"pipeline: .*nfes"):
        cli.run_stage("pipeline", {"nfes": "many"})  # Prefect's type check, as one error, before any run


@pytest.mark.parametrize("stage", sorted(cli.STAGES))
def test_every_flow_parameter_is_a_described_cli_option(stage):
    flow = cli.load_flow(stage)
    parser = cli.stage_parser(stage, flow)
    options = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(options) == set(inspect.signature(flow.fn).parameters)
    assert all(a.help.strip() and not a.help.startswith(" (default") for a in options.values()), stage


def test_cli_options_parse_to_the_flow_parameters():
    flow = cli.load_flow("pipeline")
    args = ["--solver", "euler", "heun", "--nfe", "3", "5", "--nfes-by-solver", "heun=3,5", '{"euler": [4]}',
            "--nfes-by-solver", "ipndm=5", "--objective", "final", "--objective-options", "iterations=3", "optimizer=adam",
            "--no-guard", "--holdout", "0.5", "--metrics", "rmse"]
    params = vars(cli.stage_parser("pipeline", flow).parse_args(args))
    assert params == {"solvers": ["euler", "heun"], "nfes": [3, 5], "guard": False, "holdout": 0.5,
                      "nfes_by_solver": {"heun": [3, 5], "euler": [4], "ipndm": [5]}, "metrics": ["rmse"],
                      "objective": "final", "objective_options": {"iterations": 3, "optimizer": "adam"}}
    flow.validate_parameters(params)
    check_pipeline(_bound(flow, params))
    with pytest.raises(SystemExit):
        cli.stage_parser("pipeline", flow).parse_args(["--nfes-by-solver", "heun"])


def test_dode_run_rejects_bad_input_with_one_line(capsys):
    from dode.cli import main

    assert main(["run", "pipeline", "--solvers", "heun", "--nfe", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dode run: error: no solver in ['heun'] can make exactly the NFEs [4]; heun makes odd NFEs only"]


def test_results_are_shown_by_their_shape():
    row = {"solver": "euler", "nfe": 3, "label": "RMSE to teacher", "base": 0.5, "dode": 0.25, "teacher": None,
           "change_pct": -50.0}
    assert cli.show({"rows": [row], "report": "r.md"}).splitlines()[2:] == [
        "euler        3  RMSE to teacher         0.5       0.25          —   -50.0%", "report: r.md"]
    assert cli.show([{"samples": "ab" * 32, "label": "FD-pixels", "value": 1.5, "n": 8}]) == (
        "abababababab  FD-pixels: 1.5  (n=8)")
    assert cli.show("0123abcd") == "0123abcd"


def _bound(flow, params):
    bound = inspect.signature(flow.fn).bind(**params)
    bound.apply_defaults()
    return bound.arguments


def test_the_deploy_commands_in_the_header_name_real_deployments():
    header = [line for line in (Path(__file__).resolve().parents[2] / "prefect.yaml").read_text().splitlines()
              if line.startswith("#")]
    named = [word for line in header for word in re.findall(r"--name (\S+)", line)]
    assert named and set(named) <= {d["name"] for d in DEPLOYMENTS}  # `prefect deploy --name` takes these
    pull = SPEC["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert any(f"{pull.strip('{} $')}=$PWD prefect --no-prompt deploy" in line for line in header)


def test_the_flows_package_carries_the_deployments():
    from flows import PREFECT_YAML

    assert yaml.safe_load(PREFECT_YAML.read_text()) == SPEC
