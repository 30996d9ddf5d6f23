"""Side-by-side evaluation inside a flow: base and D-ODE samples per (solver, NFE) cell and the teacher's,
each scored by every metric; the rows of the results table. Shared by the pipeline and score flows."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from dode.generate import SamplingJob
from dode.grids import GridSpec
from dode.store.lambdas import load_lambdas

from . import tasks
from .checks import FEATURES, check_metrics
from .common import open_registry
from .shards import sample_jobs, score_all, shard_runner


def resolve_metrics(metrics: list[str], model: str) -> list[str]:
    """``["auto"]`` -> the model's default metrics; anything else is checked against the known metrics."""
    check_metrics(metrics)
    return tasks.auto_metrics(model) if list(metrics) == ["auto"] else list(dict.fromkeys(metrics))


def teacher_job(model: str, family: str, steps: int, teacher: dict, n_samples: int, first_seed: int,
                batch_size: int) -> dict:
    """The teacher's own samples on the eval seeds: its solver on the finest teacher grid of the sweep
    (the ``factor``-fold step count of the largest student grid; for Karras grids, its exact refinement)."""
    grid = GridSpec(family, teacher["factor"] * steps).to_dict()
    return SamplingJob(model, teacher["solver"], grid, None, n_samples, first_seed, batch_size).to_dict()


def evaluate_cells(
    registry: str, model_id: str, model: str, cells: list[dict], teacher: dict, metrics: list[str],
    reference: str | None, n_samples: int, first_seed: int, batch_size: int, num_shards: int, dask: bool,
    dask_address: str | None,
) -> tuple[list[dict], list[dict], str, list[str]]:
    """Sample and score every cell ({solver, nfe, grid, lambdas}) base and D-ODE, and the teacher once per grid
    family. Returns (rows, cells with their samples ids, the teacher samples id, every artifact id used)."""
    log = get_run_logger()
    families = {c["grid"]["family"] for c in cells}
    teachers = {f: teacher_job(model, f, max(c["grid"]["steps"] for c in cells if c["grid"]["family"] == f), teacher,
                               n_samples, first_seed, batch_size) for f in sorted(families)}
    jobs = list(teachers.values())
    for c in cells:
        base = SamplingJob(model, c["solver"], c["grid"], None, n_samples, first_seed, batch_size)
        jobs += [base.to_dict(), SamplingJob(**{**base.to_dict(), "lambdas_id": c["lambdas"]}).to_dict()]
    with shard_runner(dask, dask_address) as run:
        log.info("sampling %d jobs x %d samples in %d shard(s)%s", len(jobs), n_samples, num_shards,
                 " on Dask" if dask or dask_address else "")
        ids = sample_jobs(run, registry, jobs, num_shards)
        teacher_ids = dict(zip(sorted(families), ids[: len(teachers)]))
        cells = [{**c, "base": b, "dode": d} for c, b, d in zip(cells, ids[len(teachers)::2], ids[len(teachers) + 1::2])]
        refs = {m: reference or tasks.reference_stats(registry, model_id, m, n_samples, first_seed)
                for m in metrics if m in FEATURES}
        items = [(teacher_ids[f], m, refs[m]) for f in sorted(families) for m in refs]
        for c in cells:
            family = c["grid"]["family"]
            items += [(c[side], m, refs.get(m, teacher_ids[family])) for side in ("base", "dode") for m in metrics]
        log.info("scoring %d samples artifacts x %d metric(s)", len(ids), len(metrics))
        score_ids = score_all(run, registry, items)
    reg = open_registry(registry)
    value = {(s, m): reg.read_json(i)["value"] for (s, m, _), i in zip(items, score_ids)}
    label = {m: reg.read_json(i)["label"] for (_, m, _), i in zip(items, score_ids)}
    rows = []
    for c in cells:
        lam = reg.get(c["lambdas"])
        scale = load_lambdas(reg, lam).guard.get("scale")
        for m in metrics:
            base, dode_ = value[(c["base"], m)], value[(c["dode"], m)]
            teacher_value = value.get((teacher_ids[c["grid"]["family"]], m))
            rows.append({"solver": c["solver"], "nfe": c["nfe"], "metric": m, "label": label[m], "base": base,
                         "dode": dode_, "teacher": teacher_value,
                         "change_pct": None if base == 0 else 100.0 * (dode_ - base) / base,
                         "guard_scale": scale, "lambdas": lam.id})
    used = [*ids, *refs.values(), *score_ids]
    return rows, cells, teacher_ids[sorted(families)[0]], used


def print_table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width text table (one line per solver, NFE and metric)."""
    head = f"{'solver':<10} {'NFE':>3}  {'metric':<16} {'base':>10} {'D-ODE':>10} {'teacher':>10} {'change':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        teacher = "—" if r["teacher"] is None else f"{r['teacher']:.4g}"
        change = "—" if r["change_pct"] is None else f"{r['change_pct']:+.1f}%"
        lines.append(f"{r['solver']:<10} {r['nfe']:>3}  {r['label']:<16} {r['base']:>10.4g} {r['dode']:>10.4g} "
                     f"{teacher:>10} {change:>8}")
    return "\n".join(lines)
