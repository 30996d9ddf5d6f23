"""Teacher flow: the teacher trajectory for student grids of ``steps`` steps, stored for reuse by every solver."""

from __future__ import annotations

from prefect import flow

import dode
from dode.grids import GridSpec

from . import tasks
from .checks import validate
from .common import link_artifacts
from .steps import open_registry, registry_uri


@flow(name="dode-teacher", version=dode.__version__)
def teacher_flow(
    model: str = "mixture-smooth",
    steps: int = 5,
    family: str = "karras",
    teacher_factor: int = 10,
    teacher_solver: str = "dpmpp_2m",
    n_distill: int = 256,
    distill_seed: int = 1_000_000,
    batch_size: int = 250,
    registry: str | None = None,
) -> str:
    """Run ``teacher_solver`` on the ``teacher_factor``-fold refinement of the ``family`` grid of ``steps``
    steps from seeds distill_seed.. and store its states on the student grid; returns the trajectory id."""
    validate("teacher", locals())
    uri = registry_uri(registry)
    model_id = tasks.register_model(uri, model)
    traj = tasks.teacher(uri, model_id, GridSpec(family, steps).to_dict(), teacher_factor, teacher_solver, n_distill,
                         distill_seed, batch_size)
    link_artifacts(open_registry(uri), [model_id, traj])
    return traj
