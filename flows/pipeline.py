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
from dode.checks import check_pipeline, check_reference
from dode.grids import GridSpec
from dode.metrics.scores import FEATURES, resolve_metrics
from dode.report import REPORT_FILE, downloads, ui_markdown
from dode.sweep import (
    cell_fits,
    first_bases,
    plan_cells,
    plan_variants,
    result_rows,
    sampling_jobs,
    score_items,
    variant_applies,
    variant_grid,
    with_samples,
)

from . import steps, tasks
from .shards import Runner, sample_jobs, score_all, shard_runner
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
    holdout: float = 0.5,
    correction: str = "data",
    objective: str = "step",
    objective_options: dict | None = None,
    alignment: str = "exact",
    variants: dict | None = None,
    metrics: tuple[str, ...] = ("auto",),
    reference: str | None = None,
    registry: str | None = None,
    dask: bool = False,
    dask_address: str | None = None,
) -> dict:
    """Sweep solvers x NFEs on a model: base vs D-ODE vs teacher, scored, reported.

    Returns {"report": local path of report.md (or the registry URL), "report_id", "registry", "rows"}.

    Args:
        model: model name (e.g. digits-ddpm, mixture-smooth), a diffusers folder or a hub id
        solvers: base solvers to sweep
        nfes: network evaluations per sample to sweep (a solver skips those it cannot make exactly)
        nfes_by_solver: NFEs for one solver instead of nfes, e.g. heun=3,5,7,9
        family: grid family: karras, time_uniform, time_quadratic, logsnr_uniform, ddim
        teacher_factor: teacher steps per student step
        teacher_solver: teacher solver, shared by all students of a grid
        n_distill: teacher/distillation samples
        distill_seed: first seed of the distillation samples
        n_samples: evaluation samples per cell
        first_seed: first seed of the evaluation samples
        batch_size: samples per batch and per stored chunk
        num_shards: sampling shards per job
        guard: held-out guard on the fitted lambdas
        holdout: the guard's fraction of the distillation noise (dode.distill.split)
        correction: D-ODE correction flavour: data or noise
        objective: distillation objective (dode.objectives), e.g. step
        objective_options: the objective's options, e.g. iterations=150 (objective final)
        alignment: teacher targets: exact (the refined student grid) or official (the reference code's)
        variants: more fits to compare, by name: {objective, options, solvers, nfes, first_step}, e.g.
            {"λ+timesteps": {"objective": "final", "solvers": ["euler"], "nfes": [4, 5]}}; first_step analytic or
            flowmap answers the first evaluation with a Gaussian of the model (compared with base+analytic)
        metrics: fd-digits, fd-pixels, fid, rmse, or auto (the model's own)
        reference: reference-stats artifact id for the Fréchet distances
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
        dask: run shards on a temporary local Dask cluster
        dask_address: run shards on an existing Dask cluster (scheduler address)
    """
    check_pipeline(locals())
    log = get_run_logger()
    cells = plan_cells(list(solvers), list(nfes), nfes_by_solver, family)
    uri = registry_uri(registry)
    reg = open_registry(uri)
    reg.check_writable()
    check_reference(reg, reference)  # before the teacher, fits and sampling run, not at scoring
    progress = create_progress_artifact(0.0, key="dode-pipeline-progress", description=f"D-ODE sweep of {model}")
    model_id = tasks.register_model(uri, model)
    metric_list = resolve_metrics(metrics, steps.model(model))
    log.info("%d cells on %s (%s grids), metrics %s, registry %s", len(cells), model, family, metric_list, uri)

    planned = plan_variants(variants)
    with shard_runner(dask, dask_address) as run:  # in this process, or on Dask
        # Teachers and lambdas: one teacher per student grid size, one fit per cell.
        teachers, cells = fit_cells(run, uri, model_id, cells, {
            "teacher_factor": teacher_factor, "teacher_solver": teacher_solver, "n_samples": n_distill,
            "first_seed": distill_seed, "batch_size": batch_size}, {
            "guard": guard, "holdout": holdout, "correction": correction, "objective": objective,
            "objective_options": objective_options, "alignment": alignment}, planned, progress)

        # Base, D-ODE and teacher samples (in shards), scored.
        rows, cells, teacher_samples, used = evaluate_cells(
            run, uri, model_id, model, cells, {"solver": teacher_solver, "factor": teacher_factor}, metric_list,
            reference, n_samples, first_seed, batch_size, num_shards)
    update_progress_artifact(progress, 90.0)

    # Table, report and links in the Prefect UI; the report itself in the registry.
    meta = {"model": model, "fingerprint": reg.get(model_id).params["fingerprint"][:16], "grid family": family,
            "teacher": f"{teacher_solver} on the {teacher_factor}x refined student grid (exact alignment)"
            if alignment == "exact" else f"Euler on a fresh {teacher_factor}x-NFE grid (official alignment)",
            "distillation samples": f"{n_distill} (seeds from {distill_seed}; guard {guard}, holdout {holdout})",
            "objective": f"{objective} {objective_options or ''}".strip(),
            **{f"variant {k}": f"{v['objective']} {v['options'] or ''}".strip()
               + (f", first step {v['first_step']}" if v["first_step"] != "network" else "") for k, v in planned.items()},
            "evaluation samples": f"{n_samples} per cell (seeds from {first_seed})", "correction": correction,
            "registry": uri}
    path, report_id, ui_report = publish_report(uri, f"{model}/sweep/{family}", meta, rows, cells, teacher_samples,
                                                used)
    tasks.link_artifacts(reg, [model_id, *teachers, *(lam for c in cells for lam in cell_fits(c).values()), *used,
                               report_id])
    # Last, so that the UI (a run's artifacts newest first) shows the report and the table above the links.
    create_table_artifact(rows, key="dode-results", description=f"{meta['model']}: base vs D-ODE vs teacher")
    create_markdown_artifact(ui_report, key="dode-report", description=f"report {report_id} at {path}")
    update_progress_artifact(progress, 100.0)
    log.info("%d results in the table artifact 'dode-results'; report: %s", len(rows), path)
    return {"report": path, "report_id": report_id, "registry": uri, "rows": rows}


def fit_cells(run: Runner, uri: str, model_id: str, cells: list[dict], teacher: dict, fit: dict, variants: dict,
              progress: object) -> tuple[list[str], list[dict]]:
    """The teacher of every student grid size (``teacher``: the teacher task's settings), then the fits of every
    cell against its grid's stored teacher states: D-ODE (``fit``: the distill task's settings) and each
    variant that applies (``dode.sweep.plan_variants``). Returns the trajectory ids and the cells with their
    lambdas ids ("lambdas", and "variants" by name). Variants with an analytic first step share one Gaussian of
    the model (its ``teacher["n_samples"]`` own samples) and are compared with the base solver on their grid."""
    family = cells[0]["grid"]["family"]
    slots = [(i, None) for i in range(len(cells))]
    slots += [(i, name) for name, v in variants.items() for i, c in enumerate(cells) if variant_applies(v, c)]
    grids = [cells[i]["grid"] if name is None else variant_grid(variants[name], cells[i]) for i, name in slots]
    steps = sorted({g["steps"] for g in grids})
    trajectories = dict(zip(steps, run([(tasks.teacher, {
        "registry": uri, "model_id": model_id, "grid": GridSpec(family, s).to_dict(), **teacher}) for s in steps])))
    gaussian = None
    if any(v["first_step"] != "network" for v in variants.values()):
        gaussian = tasks.gaussian(uri, model_id, teacher["n_samples"], teacher["first_seed"], teacher["batch_size"])
    update_progress_artifact(progress, 20.0)
    options = {name: {"objective": v["objective"], "objective_options": v["options"], "first_step": v["first_step"],
                      "gaussian_id": gaussian if v["first_step"] != "network" else None}
               for name, v in variants.items()}
    fitted = run([(tasks.distill, {"registry": uri, "trajectory_id": trajectories[grid["steps"]],
                                   "solver": cells[i]["solver"], **fit, **options.get(name, {})})
                  for (i, name), grid in zip(slots, grids)])
    update_progress_artifact(progress, 35.0)
    out = [{**c, "variants": {}, "grids": {}, "gaussian": gaussian, "first_bases": first_bases(c, variants)}
           for c in cells]
    for (i, name), lam, grid in zip(slots, fitted, grids):
        if name is None:
            out[i]["lambdas"] = lam
        else:
            out[i]["variants"][name], out[i]["grids"][name] = lam, grid
    return [*trajectories.values(), *([gaussian] if gaussian else [])], out


def evaluate_cells(
    run: Runner, registry: str, model_id: str, model: str, cells: list[dict], teacher: dict, metrics: list[str],
    reference: str | None, n_samples: int, first_seed: int, batch_size: int, num_shards: int,
) -> tuple[list[dict], list[dict], str, list[str]]:
    """Sample and score every cell ({solver, nfe, grid, lambdas}) base and D-ODE, and the teacher once per grid
    family, with ``run`` (``flows.shards.shard_runner``). Returns (rows, cells with their samples ids, the
    teacher samples id, every artifact id used). Shared by the pipeline and score flows."""
    log = get_run_logger()
    families, jobs = sampling_jobs(model, cells, teacher, n_samples, first_seed, batch_size)
    log.info("sampling %d jobs x %d samples in %d shard(s)", len(jobs), n_samples, num_shards)
    ids = sample_jobs(run, registry, jobs, num_shards)
    cells, teachers = with_samples(cells, families, ids)
    refs = {m: reference or tasks.reference_stats(registry, model_id, m, n_samples, first_seed)
            for m in metrics if m in FEATURES}
    items = score_items(cells, teachers, refs, metrics)
    log.info("scoring %d samples artifacts x %d metric(s)", len(ids), len(metrics))
    score_ids = score_all(run, registry, items)
    rows = result_rows(open_registry(registry), cells, teachers, items, score_ids, metrics)
    return rows, cells, teachers[families[0]], [*ids, *refs.values(), *score_ids]


def publish_report(uri: str, title: str, meta: dict, rows: list[dict], cells: list[dict], teacher_samples: str,
                   used: list[str]) -> tuple[str, str, str]:
    """The report in the registry, and its copy for the Prefect UI: (its path, its id, the UI markdown)."""
    reg = open_registry(uri)
    parents = [*{lam for c in cells for lam in cell_fits(c).values()}, *(i for i in used if reg.get(i).kind == "score")]
    report_id = tasks.report(uri, title, meta, rows, cells, teacher_samples, sorted(parents))
    report = reg.get(report_id)
    path = str(reg.local_path(report, REPORT_FILE)) if reg.local else f"{uri}/artifacts/{report.id}"
    # The UI's copy: images inlined (relative links do not render there), downloads as command lines.
    images = {name: reg.read_bytes(report, name) for name in report.files if name.endswith(".png")}
    shared = [report_id, *sorted(parents), *(i for i in used if reg.get(i).kind == "samples")]
    text = reg.read_bytes(report, REPORT_FILE).decode() + "\n" + downloads(reg, shared)
    return path, report_id, ui_markdown(text, images)
