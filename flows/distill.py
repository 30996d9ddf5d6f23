"""Distill flow: D-ODE lambdas for one solver and NFE, fitted to the (stored, shared) teacher trajectory."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

import dode
from dode.store.lambdas import load_lambdas

from . import tasks
from .checks import plan_cells, validate
from .common import link_artifacts
from .steps import open_registry, registry_uri


@flow(name="dode-distill", version=dode.__version__)
def distill_flow(
    model: str = "mixture-smooth",
    solver: str = "euler",
    nfe: int = 5,
    family: str = "karras",
    teacher_factor: int = 10,
    teacher_solver: str = "dpmpp_2m",
    n_distill: int = 256,
    distill_seed: int = 1_000_000,
    batch_size: int = 250,
    guard: bool = True,
    holdout: float = 0.25,
    correction: str = "data",
    registry: str | None = None,
) -> dict:
    """Teacher (found or computed) then the closed-form fit; returns {"lambdas": id, "values", "trajectory"}."""
    validate("distill", locals())
    (cell,) = plan_cells([solver], [], {solver: [nfe]}, family)
    uri = registry_uri(registry)
    reg = open_registry(uri)
    model_id = tasks.register_model(uri, model)
    traj = tasks.teacher(uri, model_id, cell["grid"], teacher_factor, teacher_solver, n_distill, distill_seed,
                         batch_size)
    lam_id = tasks.distill(uri, traj, solver, guard, holdout, correction)
    lam = load_lambdas(reg, lam_id)
    create_table_artifact([{"k": k, "lambda": v} for k, v in enumerate(lam.values)], key="dode-lambdas",
                          description=f"{model} {solver} NFE {nfe}: lambda per evaluation (guard {lam.guard})")
    link_artifacts(reg, [model_id, traj, lam_id])
    get_run_logger().info("lambdas %s: %s", lam_id[:12], [round(v, 4) for v in lam.values])
    return {"lambdas": lam_id, "values": list(lam.values), "trajectory": traj}
