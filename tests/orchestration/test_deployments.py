"""prefect.yaml without a server: every deployment loads, its parameters validate, its schedules parse."""

import argparse
import inspect
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from flows import cli
from flows.checks import validate

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
DEPLOYMENTS = SPEC["deployments"]
STAGE_OF = {f"{module}:{fn}": stage for stage, (module, fn, _) in cli.STAGES.items()}


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_loads_and_its_parameters_validate(dep, monkeypatch, root):
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(root)
    flow = load_flow_from_entrypoint(dep["entrypoint"])
    params = dep.get("parameters", {})
    flow.validate_parameters(params)  # types, as the server checks them
    bound = inspect.signature(flow.fn).bind(**params)
    bound.apply_defaults()
    validate(STAGE_OF[dep["entrypoint"]], bound.arguments)  # choices and ranges, as `dode run` checks them
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
        validate("pipeline", {**_defaults(flow), "solvers": ["rk45"]})
    with pytest.raises(ValueError, match="heun makes odd NFEs only"):
        validate("pipeline", {**_defaults(flow), "solvers": ["heun"], "nfes": [4]})


def test_every_cli_option_is_a_flow_parameter():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser.add_subparsers(dest="stage"))
    for stage, (module, fn, _) in cli.STAGES.items():
        flow = getattr(__import__(module, fromlist=[fn]), fn)
        sub = parser._subparsers._group_actions[0].choices[stage]
        dests = {a.dest for a in sub._actions if a.dest not in ("help",)}
        assert dests <= set(inspect.signature(flow.fn).parameters), (stage, dests)


def test_dode_run_rejects_bad_input_with_one_line(capsys):
    from dode.cli import main

    assert main(["run", "pipeline", "--solvers", "heun", "--nfe", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dode run: error: no solver in ['heun'] can make exactly the NFEs [4]; heun makes odd NFEs only"]


def _defaults(flow):
    return {k: p.default for k, p in inspect.signature(flow.fn).parameters.items()}
