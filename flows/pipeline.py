"""The end-to-end D-ODE sweep for one model: teachers -> lambdas -> samples -> scores -> report.

For every solver x NFE cell the student grid is ``GridSpec.for_nfe(family, solver, nfe)``. The teacher
of a student grid is ``teacher_solver`` on its ``teacher_factor``-fold refinement (exact alignment); it
runs once per (model, family, grid steps, factor, teacher solver, seeds) and serves every solver with
that many grid steps: euler/ipndm/dpmpp_2m/deis/unipc at NFE n and heun at NFE 2n - 1 share it. The
default teacher solver, ``dpmpp_2m`` (2nd order, one evaluation per step), is fixed independently of
the students for that reason, and recorded with each lambdas artifact.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

import dode
from dode.grids import GridSpec

from . import tasks
from .checks import plan_cells, validate
from .common import link_artifacts
from .evaluate import evaluate_cells, resolve_metrics
from .report import REPORT_FILE, publish_report
from .shards import shard_runner
from .steps import open_registry, registry_uri


@flow(name="dode-pipeline", version=dode.__version__)
def pipeline_flow(
    model: str = "mixture-smooth",
    solvers: tuple[str, ...] = ("euler", "ipndm", "dpmpp_2m"),
    nfes: tuple[int, ...] = (3, 4, 5, 6),
    nfes_by_solver: dict[str, list[int]] | None = None,
    family: str = "karras",
    teacher_factor: int = 10,
    teacher_solver: str = "dpmpp_2m",
    n_distill: int = 256,
    distill_seed: int = 1_000_000,
    n_samples: int = 1000,
    first_seed: int = 0,
    batch_size: int = 250,
    num_shards: int = 1,
    guard: bool = True,
    holdout: float = 0.25,
    correction: str = "data",
    metrics: tuple[str, ...] = ("auto",),
    reference: str | None = None,
    registry: str | None = None,
    dask: bool = False,
    dask_address: str | None = None,
) -> dict:
    """Sweep ``solvers`` x ``nfes`` on ``model``: base vs D-ODE vs teacher, scored, reported.

    Returns {"report": local path of report.md (or the registry URL), "report_id", "registry", "rows"}.
    """
    validate("pipeline", locals())
    log = get_run_logger()
    cells = plan_cells(list(solvers), list(nfes), nfes_by_solver, family)
    uri = registry_uri(registry)
    reg = open_registry(uri)
    reg.check_writable()
    progress = create_progress_artifact(0.0, key="dode-pipeline-progress", description=f"D-ODE sweep of {model}")
    model_id = tasks.register_model(uri, model)
    metric_list = resolve_metrics(list(metrics), model)
    log.info("%d cells on %s (%s grids), metrics %s, registry %s", len(cells), model, family, metric_list, uri)

    with shard_runner(dask, dask_address) as run:  # in this process, or on Dask
        # Teachers: one per student grid size, shared by every solver on that grid.
        steps = sorted({c["grid"]["steps"] for c in cells})
        teachers = dict(zip(steps, run([(tasks.teacher, {
            "registry": uri, "model_id": model_id, "grid": GridSpec(family, s).to_dict(),
            "teacher_factor": teacher_factor, "teacher_solver": teacher_solver, "n_samples": n_distill,
            "first_seed": distill_seed, "batch_size": batch_size}) for s in steps])))
        update_progress_artifact(progress, 20.0)

        # Lambdas: one closed-form fit per cell against its grid's stored teacher states.
        fitted = run([(tasks.distill, {"registry": uri, "trajectory_id": teachers[c["grid"]["steps"]],
                                       "solver": c["solver"], "guard": guard, "holdout": holdout,
                                       "correction": correction}) for c in cells])
        cells = [{**c, "lambdas": lam} for c, lam in zip(cells, fitted)]
        update_progress_artifact(progress, 35.0)

        # Base, D-ODE and teacher samples (in shards), scored.
        rows, cells, teacher_samples, used = evaluate_cells(
            run, uri, model_id, model, cells, {"solver": teacher_solver, "factor": teacher_factor}, metric_list,
            reference, n_samples, first_seed, batch_size, num_shards)
    update_progress_artifact(progress, 90.0)

    # Table, report and links in the Prefect UI; the report itself in the registry.
    meta = {"model": model, "fingerprint": reg.get(model_id).params["fingerprint"][:16], "grid family": family,
            "teacher": f"{teacher_solver} on the {teacher_factor}x refined student grid (exact alignment)",
            "distillation samples": f"{n_distill} (seeds from {distill_seed}; guard {guard}, holdout {holdout})",
            "evaluation samples": f"{n_samples} per cell (seeds from {first_seed})", "correction": correction,
            "registry": uri}
    create_table_artifact(rows, key="dode-results", description=f"{model}: base vs D-ODE vs teacher")
    parents = [*{c["lambdas"] for c in cells}, *(i for i in used if reg.get(i).kind == "score")]
    report_id = publish_report(uri, f"{model}/sweep/{family}", meta, rows, cells, teacher_samples, sorted(parents))
    report = reg.get(report_id)
    path = str(reg.local_path(report, REPORT_FILE)) if reg.local else f"{uri}/artifacts/{report.id}"
    create_markdown_artifact(reg.read_bytes(report, REPORT_FILE).decode(), key="dode-report",
                             description=f"report {report.id} at {path}")
    link_artifacts(reg, [model_id, *teachers.values(), *(c["lambdas"] for c in cells), *used, report_id])
    update_progress_artifact(progress, 100.0)
    log.info("%d results in the table artifact 'dode-results'; report: %s", len(rows), path)
    return {"report": path, "report_id": report_id, "registry": uri, "rows": rows}
