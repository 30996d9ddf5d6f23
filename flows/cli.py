"""``dode run STAGE``: run a flow locally, on Prefect's ephemeral server, with no set-up.

Registered with dode's command line through the ``dode.commands`` entry point (pyproject.toml): the
library never imports this package. A stage's options derive from its configuration (``dode.pipeline.runs``:
names, types, defaults and descriptions, declared once there) by ``dode.cli.options``, as the library's own
commands' do: a field is ``--field``, a field of a part is ``--part-field`` (``--teacher-factor``,
``--fit-objective``, ``--sampling-n-samples``); the flow's other parameters (registry, dask) come from its
Prefect parameter schema. An option left out takes the configuration's default. Importing this module does not
import Prefect (``dode --help`` stays fast); the flow module is imported when a stage runs or shows its help.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dode.cli.options import add_config_options, add_option, nest
from dode.common import progress
from dode.common.config import build
from dode.pipeline import runs
from dode.pipeline.report import text_table

STAGES = runs.STAGES  # stage -> its configuration; its flow is the one named "dode-<stage>" (``entrypoint``)
FLOW_MODULES = ("dode_flows.pipeline", "dode_flows.stages")
CONFIG = "config"  # the flows' configuration parameter


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    """The ``dode run`` command (the ``dode.commands`` entry point): a stage and the flow's options."""
    p = sub.add_parser(
        name, help=f"run a Prefect flow locally: {', '.join(STAGES)}",
        description="Run a D-ODE flow on Prefect's ephemeral local server (no set-up). The options are the "
        "stage's configuration (dode.pipeline.runs), as in prefect.yaml's deployments; options left out take its defaults. "
        "`dode run STAGE --help` lists a stage's options.",
    )
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars (they show only on a terminal anyway); before STAGE")
    p.add_argument("stage", choices=STAGES, metavar="STAGE", help=f"one of: {', '.join(STAGES)}")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the flow's parameters as --options")
    p.set_defaults(func=main)


def entrypoint(stage: str) -> str:
    """The stage's flow as prefect.yaml's entrypoints name it ("module:attribute"): the flow of FLOW_MODULES
    named "dode-<stage>" (imports the flow modules, and Prefect). A new stage needs no line here."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    from prefect import Flow

    for module in FLOW_MODULES:
        for attribute, obj in vars(importlib.import_module(module)).items():
            if isinstance(obj, Flow) and obj.name == f"dode-{stage}":
                return f"{module}:{attribute}"
    raise ValueError(f"no flow named 'dode-{stage}' in {list(FLOW_MODULES)}")


def load_flow(stage: str) -> Any:
    """The Prefect flow of a stage (imports the flow modules, and Prefect)."""
    module, name = entrypoint(stage).split(":")
    return getattr(importlib.import_module(module), name)


def stage_parser(stage: str, flow: Any) -> argparse.ArgumentParser:
    """One option per field of the stage's configuration (a part's fields prefixed with its name) and per
    other flow parameter (from the flow's Prefect parameter schema)."""
    from prefect.utilities.callables import parameter_schema

    p = argparse.ArgumentParser(prog=f"dode run {stage}", description=(flow.description or "").split("\n\n")[0],
                                allow_abbrev=False)
    add_config_options(p, runs.STAGES[stage])
    schema = parameter_schema(flow.fn).model_dump()["properties"]
    for name, prop in schema.items():
        if name != CONFIG:
            add_option(p, name, prop, schema)
    return p


def run_stage(stage: str, params: dict[str, Any]) -> Any:
    """Run one stage's flow with ``params`` (its configuration under "config", as a mapping or built) and
    return its result (raises what the flow raised). Bad parameters raise one ValueError before any run: the
    configuration is built first (``dode.distillation.config.build``: its rules and defaults), then Prefect checks the rest."""
    from prefect.exceptions import ParameterTypeError

    flow = load_flow(stage)
    params = {**params, CONFIG: build(runs.STAGES[stage], params.get(CONFIG))}
    try:
        inspect.signature(flow.fn).bind(**params)
        flow.validate_parameters(params)
    except (TypeError, ParameterTypeError) as err:
        raise ValueError(f"{stage}: {'; '.join(str(err).splitlines())}") from None
    with local_settings():
        state = flow(**params, return_state=True)
        wait_for_server(state.state_details.flow_run_id)
    return state.result()


def nested(options: dict[str, Any], flow: Any) -> dict[str, Any]:
    """Parsed options by dest (``part.field``) as ``flow``'s parameters: its own as they are, the
    configuration's fields nested under "config", by part (``dode.cli.options.nest``)."""
    own = set(inspect.signature(flow.fn).parameters) - {CONFIG}
    return {**{k: v for k, v in options.items() if k in own},
            CONFIG: nest({k: v for k, v in options.items() if k not in own})}


@contextmanager
def local_settings() -> Iterator[None]:
    """On the ephemeral server (no PREFECT_API_URL), flow runs send no heartbeats: they serve a server's
    detection of crashed runs, and this server stops with the process (``dode_flows.server``: also when it is
    killed); each run saves ~1 s (its heartbeat thread's join). Against a real server, the settings are left
    alone."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from .server import tie_ephemeral_server

    tie_ephemeral_server()
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def wait_for_server(flow_run_id: Any) -> None:
    """On the ephemeral server, wait until it has recorded every task run of the flow run as final, so
    stopping it at exit interrupts no database write (which it would log as errors)."""
    from prefect.settings import PREFECT_API_URL

    from .tasks import settled_task_runs

    if flow_run_id is not None and not PREFECT_API_URL.value():  # else a real server goes on running
        settled_task_runs(flow_run_id)


def show(result: Any) -> str:
    """A flow's result for a person: a results table (and the report's path), score lines, JSON, or the id."""
    if isinstance(result, dict) and "rows" in result:
        return f"{text_table(result['rows'])}\nreport: {result['report']}"
    if isinstance(result, list) and result and "solver" in result[0]:
        return text_table(result)
    if isinstance(result, list):
        return "\n".join(f"{r['samples'][:12]}  {r['label']}: {r['value']:.6g}  (n={r['n']})" for r in result)
    return json.dumps(result, indent=2) if isinstance(result, dict) else str(result)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``dode run STAGE [--option ...]``."""
    flow = load_flow(args.stage)
    options = stage_parser(args.stage, flow).parse_args(args.options)
    with progress.bars(not args.quiet):  # teacher, distillation and feature-extraction bars in this process
        result = run_stage(args.stage, nested(dict(vars(options)), flow))
    sys.stdout.flush()
    print(show(result))
    return 0
