"""``dode run STAGE``: run a flow locally, on Prefect's ephemeral server, with no set-up.

The options are the flows' parameters (the same names the deployments in prefect.yaml use); an option
left out takes the flow's default. Importing this module does not import Prefect: ``dode --help`` stays
fast and ``import dode`` stays Prefect-free; the flow module is imported when a stage runs.
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

from .checks import validate

STAGES: dict[str, tuple[str, str, str]] = {  # stage -> (module, flow function, help)
    "pipeline": ("flows.pipeline", "pipeline_flow", "the end-to-end sweep: solvers x NFEs, base vs D-ODE vs teacher"),
    "teacher": ("flows.teacher", "teacher_flow", "the teacher trajectory for student grids of --steps steps"),
    "distill": ("flows.distill", "distill_flow", "D-ODE lambdas for one --solver and --nfe"),
    "sample": ("flows.sample", "sample_flow", "a sampling job, base or with --lambdas"),
    "score": ("flows.score", "score_flow", "score --samples, or re-evaluate registered lambdas"),
}
S = argparse.SUPPRESS


def solver_nfes(text: str) -> tuple[str, list[int]]:
    """``heun=3,5,7,9`` -> ("heun", [3, 5, 7, 9])."""
    try:
        solver, values = text.split("=", 1)
        return solver, [int(v) for v in values.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SOLVER=NFE,NFE,... (e.g. heun=3,5,7,9), got {text!r}") from None


def add_common(p: argparse.ArgumentParser, *names: str) -> None:
    """Options shared by several stages, each added only where the flow has that parameter."""
    opts: dict[str, dict[str, Any]] = {
        "model": {"help": "model name (e.g. digits-ddpm, mixture-smooth) or a diffusers folder"},
        "family": {"help": "grid family: karras, time_uniform, time_quadratic, logsnr_uniform, ddim"},
        "teacher_factor": {"type": int, "help": "teacher steps per student step (default 10)"},
        "teacher_solver": {"help": "teacher solver, shared by all students of a grid (default dpmpp_2m)"},
        "n_distill": {"type": int, "help": "teacher/distillation samples"},
        "distill_seed": {"type": int, "help": "first seed of the distillation samples"},
        "n_samples": {"type": int, "help": "evaluation samples per cell"},
        "first_seed": {"type": int, "help": "first seed of the evaluation samples"},
        "batch_size": {"type": int, "help": "samples per batch and per stored chunk"},
        "num_shards": {"type": int, "help": "sampling shards per job"},
        "guard": {"action": argparse.BooleanOptionalAction, "help": "held-out guard on the fitted lambdas"},
        "holdout": {"type": float, "help": "held-out fraction for the guard"},
        "correction": {"help": "D-ODE correction flavour: data or noise"},
        "metrics": {"nargs": "+", "help": "fd-digits, fd-pixels, fid, rmse, or auto"},
        "reference": {"help": "reference-stats artifact id for the Fréchet distances"},
        "registry": {"help": "registry path or URL (default $DODE_REGISTRY or data/registry)"},
        "dask": {"action": "store_true", "help": "run sampling/scoring shards on a temporary local Dask cluster"},
        "dask_address": {"help": "run shards on an existing Dask cluster (scheduler address)"},
    }
    for name in names:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=S, **opts[name])


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """One sub-command per stage."""
    for stage, (_, _, text) in STAGES.items():
        p = sub.add_parser(stage, help=text, description=f"Run the {stage} flow locally: {text}.")
        if stage == "pipeline":
            p.add_argument("--solvers", nargs="+", default=S, help="base solvers to sweep")
            p.add_argument("--nfe", dest="nfes", nargs="+", type=int, default=S, help="NFEs to sweep")
            p.add_argument("--solver-nfe", dest="nfes_by_solver", action="append", type=solver_nfes, default=S,
                           help="NFEs for one solver instead of --nfe, e.g. heun=3,5,7,9 (repeatable)")
            add_common(p, "model", "family", "teacher_factor", "teacher_solver", "n_distill", "distill_seed",
                       "n_samples", "first_seed", "batch_size", "num_shards", "guard", "holdout", "correction",
                       "metrics", "reference", "registry", "dask", "dask_address")
        elif stage == "teacher":
            p.add_argument("--steps", type=int, default=S, help="student grid steps the teacher serves")
            add_common(p, "model", "family", "teacher_factor", "teacher_solver", "n_distill", "distill_seed",
                       "batch_size", "registry")
        elif stage == "distill":
            p.add_argument("--solver", default=S, help="base solver")
            p.add_argument("--nfe", type=int, default=S, help="network evaluations")
            add_common(p, "model", "family", "teacher_factor", "teacher_solver", "n_distill", "distill_seed",
                       "batch_size", "guard", "holdout", "correction", "registry")
        elif stage == "sample":
            p.add_argument("--solver", default=S, help="base solver (not with --lambdas)")
            p.add_argument("--nfe", type=int, default=S, help="network evaluations (not with --lambdas)")
            p.add_argument("--lambdas", default=S, help="lambdas artifact id: sample its solver and grid with D-ODE")
            add_common(p, "model", "family", "n_samples", "first_seed", "batch_size", "num_shards", "registry",
                       "dask", "dask_address")
        else:
            p.add_argument("--samples", nargs="+", default=S, help="samples artifact ids to score")
            p.add_argument("--lambdas", nargs="+", default=S, help="lambdas ids to re-evaluate (default: all of --model)")
            add_common(p, "model", "metrics", "reference", "n_samples", "first_seed", "batch_size", "num_shards",
                       "registry", "dask", "dask_address")
        p.set_defaults(stage=stage)


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The flow parameters given on the command line (the rest take the flow's defaults)."""
    params = {k: v for k, v in vars(args).items() if k not in ("stage", "func", "command")}
    if "nfes_by_solver" in params:
        params["nfes_by_solver"] = dict(params["nfes_by_solver"])
    return params


def run_stage(stage: str, params: dict[str, Any]) -> Any:
    """Run one stage's flow with ``params`` and return its result (raises what the flow raised)."""
    module, name, _ = STAGES[stage]
    flow = getattr(importlib.import_module(module), name)
    try:
        bound = inspect.signature(flow.fn).bind(**params)
    except TypeError as err:
        raise ValueError(f"{stage}: {err}") from None
    bound.apply_defaults()
    validate(stage, bound.arguments)
    with local_settings():
        state = flow(**params, return_state=True)
        wait_for_server(state.state_details.flow_run_id)
    return state.result()


@contextmanager
def local_settings() -> Iterator[None]:
    """On the ephemeral server (no PREFECT_API_URL), flow runs send no heartbeats: they serve a server's
    detection of crashed runs, and this server stops with the process; each run saves ~1 s (its heartbeat
    thread's join). Against a real server, the settings are left alone."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def wait_for_server(flow_run_id: Any) -> None:
    """On the ephemeral server, wait until it has recorded every task run of the flow run as final, so
    stopping it at exit interrupts no database write (which it would log as errors)."""
    from prefect.settings import PREFECT_API_URL

    from .common import settled_task_runs

    if flow_run_id is not None and not PREFECT_API_URL.value():  # else a real server goes on running
        settled_task_runs(flow_run_id)


def report(stage: str, result: Any) -> None:
    """Print a stage's result for a person: the results table and the report path, or the ids."""
    if stage == "pipeline":
        from .sweep import print_table

        print(print_table(result["rows"]))
        print(f"report: {result['report']}")
    elif stage == "score":
        if result and "solver" in result[0]:
            from .sweep import print_table

            print(print_table(result))
        else:
            for row in result:
                print(f"{row['samples'][:12]}  {row['label']}: {row['value']:.6g}  (n={row['n']})")
    elif stage == "distill":
        print(json.dumps(result, indent=2))
    else:
        print(result)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``dode run STAGE``."""
    result = run_stage(args.stage, parameters(args))
    sys.stdout.flush()
    report(args.stage, result)
    return 0
