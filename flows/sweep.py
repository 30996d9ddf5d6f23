"""The sweep's bookkeeping, without Prefect: which samples to draw, which scores to take, the result rows.

Shared by the flows (``flows.evaluate``) and the plain-loop benchmark, so both do exactly the same work.
"""

from __future__ import annotations

from typing import Any

from dode.generate import SamplingJob
from dode.grids import GridSpec
from dode.store.lambdas import load_lambdas

from .steps import open_registry


def teacher_job(model: str, family: str, steps: int, teacher: dict, n_samples: int, first_seed: int,
                batch_size: int) -> dict:
    """The teacher's own samples on the eval seeds: its solver on the finest teacher grid of the sweep
    (the ``factor``-fold step count of the largest student grid; for Karras grids, its exact refinement)."""
    grid = GridSpec(family, teacher["factor"] * steps).to_dict()
    return SamplingJob(model, teacher["solver"], grid, None, n_samples, first_seed, batch_size).to_dict()


def sampling_jobs(model: str, cells: list[dict], teacher: dict, n_samples: int, first_seed: int,
                  batch_size: int) -> tuple[list[str], list[dict]]:
    """(grid families, jobs): one teacher job per family first, then base and D-ODE per cell."""
    families = sorted({c["grid"]["family"] for c in cells})
    jobs = [teacher_job(model, f, max(c["grid"]["steps"] for c in cells if c["grid"]["family"] == f), teacher,
                        n_samples, first_seed, batch_size) for f in families]
    for c in cells:
        base = SamplingJob(model, c["solver"], c["grid"], None, n_samples, first_seed, batch_size).to_dict()
        jobs += [base, {**base, "lambdas_id": c["lambdas"]}]
    return families, jobs


def with_samples(cells: list[dict], families: list[str], ids: list[str]) -> tuple[list[dict], dict[str, str]]:
    """The sampled ids (in ``sampling_jobs`` order) put back: cells with base/dode ids, teacher id per family."""
    n = len(families)
    return ([{**c, "base": b, "dode": d} for c, b, d in zip(cells, ids[n::2], ids[n + 1::2])],
            dict(zip(families, ids[:n])))


def score_items(cells: list[dict], teachers: dict[str, str], refs: dict[str, str],
                metrics: list[str]) -> list[tuple[str, str, str]]:
    """(samples id, metric, reference id) to score: Fréchet distances against ``refs`` (teacher samples
    too), RMSE against the teacher samples of the cell's grid family."""
    items = [(t, m, refs[m]) for t in teachers.values() for m in refs]
    for c in cells:
        teacher = teachers[c["grid"]["family"]]
        items += [(c[side], m, refs.get(m, teacher)) for side in ("base", "dode") for m in metrics]
    return items


def result_rows(registry: str, cells: list[dict], teachers: dict[str, str], items: list[tuple[str, str, str]],
                score_ids: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """One row per cell and metric: base, D-ODE and teacher values, the relative change, the guard's scale."""
    reg = open_registry(registry)
    scores = [reg.read_json(i) for i in score_ids]
    value = {(s, m): sc["value"] for (s, m, _), sc in zip(items, scores)}
    label = {m: sc["label"] for (_, m, _), sc in zip(items, scores)}
    rows = []
    for c in cells:
        scale = load_lambdas(reg, c["lambdas"]).guard.get("scale")
        for m in metrics:
            base, dode_ = value[(c["base"], m)], value[(c["dode"], m)]
            rows.append({"solver": c["solver"], "nfe": c["nfe"], "metric": m, "label": label[m], "base": base,
                         "dode": dode_, "teacher": value.get((teachers[c["grid"]["family"]], m)),
                         "change_pct": None if base == 0 else 100.0 * (dode_ - base) / base,
                         "guard_scale": scale, "lambdas": reg.get(c["lambdas"]).id})
    return rows


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
