"""The sweep's steps in their order -- teachers -> lambdas -> samples -> scores -> report -- run by an executor.

One copy of the order: the Prefect flows run it with an executor whose steps are Prefect tasks, fanned out
through the flow's task runner (``dode_flows.runners.TaskExecutor``); ``InProcess`` runs the same steps as plain
calls (``bench/orchestration.py`` measures what Prefect costs by running both). The steps are
``dode.pipeline.steps``'s; they exchange registry ids and frozen configurations, never tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from dode.core.gaussian import NETWORK
from dode.core.grids import GridSpec
from dode.distillation.teacher import TeacherConfig
from dode.metrics.scores import FEATURES, resolve_metrics
from dode.pipeline import steps
from dode.pipeline.generate import SamplingConfig, SamplingJob
from dode.pipeline.runs import PipelineRun
from dode.pipeline.sweep import (
    cell_fits,
    first_bases,
    result_rows,
    sampling_jobs,
    score_items,
    variant_applies,
    variant_grid,
    with_samples,
)
from dode.store.lambdas import lambdas_artifact, load_lambdas
from dode.store.manifest import printable


class Executor(Protocol):
    """Runs library steps (functions of ``dode.pipeline.steps``): one call, or many at once (their results in order),
    and hears how far a sweep has come (percent)."""

    def call(self, step: Callable[..., Any], **params: Any) -> Any: ...

    def map(self, step: Callable[..., Any], calls: list[dict[str, Any]]) -> list[Any]: ...

    def progress(self, percent: float) -> None: ...


class InProcess:
    """The steps as plain calls, one after the other, in this process."""

    def call(self, step: Callable[..., Any], **params: Any) -> Any:
        return step(**params)

    def map(self, step: Callable[..., Any], calls: list[dict[str, Any]]) -> list[Any]:
        return [step(**params) for params in calls]

    def progress(self, percent: float) -> None:
        return None


def run_pipeline(config: PipelineRun, uri: str, ex: Executor) -> dict[str, Any]:
    """The whole sweep of ``config`` into registry ``uri``. Returns {"model_id", "rows", "cells", "teachers"
    (teacher and Gaussian ids), "used" (samples, reference and score ids), "report_id", "parents" (of the report)}."""
    model_id = ex.call(steps.register_model, registry=uri, name=config.model)
    metrics = resolve_metrics(config.scoring.metrics, steps.model(config.model))
    cells = [{**c, "teacher": {"solver": config.teacher.solver, "factor": config.teacher.factor}} for c in config.cells]
    steps.log.info("%d cells on %s (%s grids), metrics %s, registry %s", len(cells), config.model, config.family,
                   metrics, uri)

    # Teachers and lambdas: one teacher per student grid size, one fit per cell and variant.
    teachers, cells = fit_cells(uri, model_id, cells, config, ex)
    ex.progress(35.0)

    # Base, D-ODE, variant and teacher samples (in shards), scored.
    rows, cells, teacher_samples, used = evaluate_cells(uri, model_id, config.model, cells, metrics, config.sampling,
                                                        config.scoring.reference, ex)
    ex.progress(90.0)

    # The report, in the registry.
    reg = steps.open_registry(uri)
    parents = sorted({*(lam for c in cells for lam in cell_fits(c).values()),
                      *(i for i in used if reg.get(i).kind == "score")})
    report_id = ex.call(steps.report, registry=uri, title=f"{config.model}/sweep/{config.family}",
                        meta=report_meta(config, reg.get(model_id).params["fingerprint"], uri), rows=rows,
                        cells=cells, teacher_samples=teacher_samples, parents=parents)
    return {"model_id": model_id, "rows": rows, "cells": cells, "teachers": teachers, "used": used,
            "report_id": report_id, "parents": parents}


def report_meta(config: PipelineRun, fingerprint: str, uri: str) -> dict[str, str]:
    """The report's settings table: what the sweep ran."""
    t, fit = config.teacher, config.fit
    return {"model": config.model, "fingerprint": fingerprint[:16], "grid family": config.family,
            "teacher": f"{t.solver} on the {t.factor}x refined student grid (exact alignment)"
            if t.alignment == "exact" else f"Euler on a fresh {t.factor}x-NFE grid (official alignment)",
            "distillation samples": f"{t.n_samples} (seeds from {t.first_seed}; guard {fit.guard}, holdout "
                                    f"{fit.holdout})",
            "objective": f"{fit.objective} {fit.options.model_dump() or ''}".strip(),
            **{f"variant {k}": f"{v['objective']} {v['options'] or ''}".strip()
               + (f", first step {v['first_step']}" if v["first_step"] != NETWORK else "")
               for k, v in config.planned_variants.items()},
            "evaluation samples": f"{config.sampling.n_samples} per cell (seeds from {config.sampling.first_seed})",
            "correction": fit.correction, "registry": uri}


def fit_cells(uri: str, model_id: str, cells: list[dict], config: PipelineRun,
              ex: Executor) -> tuple[list[str], list[dict]]:
    """The fits of every cell (``fit_all``): D-ODE (the config's fit) and each variant that applies
    (``dode.pipeline.sweep.plan_variants``). Returns the teacher (and Gaussian) ids and the cells with their lambdas
    ids ("lambdas", and "variants" by name). Variants with an analytic first step share one Gaussian of the model
    (from the teacher's seeds) and are compared with the base solver on their grid."""
    variants, fits = config.planned_variants, config.variant_fits
    slots = [(i, None) for i in range(len(cells))]
    slots += [(i, name) for name, v in variants.items() for i, c in enumerate(cells) if variant_applies(v, c)]
    first = {name: v["first_step"] for name, v in variants.items()}
    trajectories, gaussian, fitted = fit_all(uri, model_id, config.family, config.teacher, [
        {"grid": cells[i]["grid"] if name is None else variant_grid(variants[name], cells[i]),
         "solver": cells[i]["solver"], "fit": fits.get(name, config.fit), "first_step": first.get(name, NETWORK)}
        for i, name in slots], any(f != NETWORK for f in first.values()), ex)
    out = [{**c, "variants": {}, "gaussian": gaussian, "first_bases": first_bases(c, variants)} for c in cells]
    for (i, name), lam in zip(slots, fitted):
        if name is None:
            out[i]["lambdas"] = lam
        else:
            out[i]["variants"][name] = lam
    return [*trajectories.values(), *([gaussian] if gaussian else [])], out


def fit_all(uri: str, model_id: str, family: str, teacher: TeacherConfig, fits: list[dict], gaussian: bool,
            ex: Executor) -> tuple[dict[int, str], str | None, list[str]]:
    """Every fit's order, the pipeline's and the distill stage's: the teacher of every student grid size among
    ``fits`` (exact alignment; an official fit runs its own), the model's Gaussian (from the teacher's seeds) if
    ``gaussian`` (an analytic first step is fitted), then every fit ({grid, solver, fit, first_step}) at once.
    Returns (the teacher ids by grid size, the Gaussian id or None, the lambdas ids in order)."""
    trajectories: dict[int, str] = {}
    if teacher.alignment == "exact":
        trajectories = teachers(uri, model_id, family, teacher, sorted({f["grid"]["steps"] for f in fits}), ex)
    gaussian_id = ex.call(steps.gaussian, registry=uri, model_id=model_id, teacher=teacher) if gaussian else None
    ex.progress(20.0)
    fitted = ex.map(steps.distill, [
        {"registry": uri, "model_id": model_id, "grid": f["grid"], "solver": f["solver"], "teacher": teacher,
         "fit": f["fit"], "first_step": f["first_step"], "trajectory_id": trajectories.get(f["grid"]["steps"]),
         "gaussian_id": gaussian_id if f["first_step"] != NETWORK else None} for f in fits])
    return trajectories, gaussian_id, fitted


def teachers(uri: str, model_id: str, family: str, teacher: TeacherConfig, sizes: list[int],
             ex: Executor) -> dict[int, str]:
    """The stored teacher (exact alignment) of the ``family`` student grid of each size in ``sizes``, by size."""
    return dict(zip(sizes, ex.map(steps.teacher, [
        {"registry": uri, "model_id": model_id, "grid": GridSpec(family, s).to_dict(), "teacher": teacher}
        for s in sizes])))


def evaluate_cells(uri: str, model_id: str, model_name: str, cells: list[dict], metrics: list[str],
                   sampling: SamplingConfig, reference: str | None,
                   ex: Executor) -> tuple[list[dict], list[dict], str, list[str]]:
    """Sample and score every cell ({solver, nfe, grid, lambdas, teacher}) base and D-ODE, and each cell's own
    teacher once per grid family. Returns (rows, cells with their samples ids, the first teacher samples id,
    every artifact id used). Shared by the pipeline and the re-evaluation."""
    teacher_keys, jobs = sampling_jobs(model_name, cells, sampling)
    steps.log.info("sampling %d jobs x %d samples in %d shard(s)", len(jobs), sampling.n_samples, sampling.num_shards)
    ids = sample_jobs(uri, jobs, sampling.num_shards, ex)
    cells, teachers = with_samples(cells, teacher_keys, ids)
    refs = {m: reference or ex.call(steps.reference_stats, registry=uri, model_id=model_id, metric=m,
                                     n_samples=sampling.n_samples, first_seed=sampling.first_seed)
            for m in metrics if m in FEATURES}
    items = score_items(cells, teachers, refs, metrics)
    steps.log.info("scoring %d samples artifacts x %d metric(s)", len(ids), len(metrics))
    score_ids = score_all(uri, items, ex)
    rows = result_rows(steps.open_registry(uri), cells, teachers, items, score_ids, metrics)
    return rows, cells, teachers[teacher_keys[0]], [*ids, *refs.values(), *score_ids]


def sample_jobs(uri: str, jobs: list[dict], num_shards: int, ex: Executor) -> list[str]:
    """Sample every job in ``num_shards`` shards (at most one per chunk), all shards at once; the jobs' samples
    artifact ids (a sharded job's gathered once its shards are done)."""
    shards = [min(num_shards, SamplingJob.from_dict(job).num_chunks) for job in jobs]
    done = iter(ex.map(steps.sample, [{"registry": uri, "job": job, "shard": s, "num_shards": n}
                                      for job, n in zip(jobs, shards) for s in range(n)]))
    ids = []
    for job, n in zip(jobs, shards):
        shard_ids = [next(done) for _ in range(n)]
        ids.append(shard_ids[0] if n == 1 else ex.call(steps.gather_samples, registry=uri, job=job))
    return ids


def score_all(uri: str, items: list[tuple[str, str, str]], ex: Executor) -> list[str]:
    """Score (samples id, metric, reference id) triples; the score ids, in order."""
    return ex.map(steps.score, [{"registry": uri, "samples_id": s, "metric": m, "reference_id": r}
                                for s, m, r in items])


def reevaluation_cells(uri: str, model_name: str, lambdas: tuple[str, ...]) -> list[dict]:
    """Cells for a re-evaluation of registered lambdas (``lambdas``, else the newest of every key for the model):
    each with its grid, its first step's base beside it, and the teacher it was fitted to."""
    reg = steps.open_registry(uri)
    arts = [lambdas_artifact(reg, i) for i in lambdas] if lambdas else list(
        {a.key: a for a in reversed(reg.find("lambdas", model=model_name))}.values())
    if not arts:
        raise ValueError(f"no lambdas registered for model {model_name!r} in {uri}; run the pipeline or distill "
                         "flow first")
    cells = []
    for a in arts:
        record, p = load_lambdas(reg, a).teacher, a.params
        try:  # a stored record (untrusted): its solver and factor pass TeacherConfig's rules before any sampling
            teacher = TeacherConfig(solver=record["solver"], factor=record["factor"],
                                    alignment=record.get("alignment", "exact"))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"lambdas {a.short} record no valid teacher ({printable(str(record))[:120]}); "
                             "re-evaluate other lambdas or distill these again") from None
        first = {} if p.get("first_step", NETWORK) == NETWORK else {"gaussian": p["gaussian"], "first_bases": {
            f"base+{p['first_step']}": {"grid": p["grid"], "first_step": p["first_step"]}}}
        cells.append({"solver": p["solver"], "nfe": p["nfe"], "grid": p["grid"], "lambdas": a.id,
                      "teacher": {"solver": teacher.solver, "factor": teacher.factor}, **first})
    return cells
