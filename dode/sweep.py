"""A sweep's plan and bookkeeping: its (solver, NFE, grid) cells, the sampling jobs and scores they need,
and the result rows. Pure functions of JSON-able configs (registry ids, ``GridSpec.to_dict()`` grids):
the flows run them as tasks, a plain loop can run them the same way.

Each cell's student grid is ``GridSpec.for_nfe(family, solver, nfe)``; the teacher's samples are drawn on
the finest teacher grid of the sweep, the ``factor``-fold step count of the family's largest student grid.
"""

from __future__ import annotations

from typing import Any

from .generate import SamplingJob
from .grids import FAMILIES, GridSpec
from .solvers import SOLVERS
from .store.lambdas import load_lambdas


def check_choice(what: str, value: Any, choices: Any) -> None:
    """One ValueError naming the valid choices unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {sorted(choices)}")


def plan_cells(solvers: list[str], nfes: list[int], nfes_by_solver: dict[str, list[int]] | None,
               family: str) -> list[dict]:
    """The (solver, NFE, grid) cells of a sweep. NFEs a solver cannot make exactly (heun: odd only) are
    left out of the shared ``nfes``; per-solver lists in ``nfes_by_solver`` must all be valid."""
    for s in [*solvers, *(nfes_by_solver or {})]:
        check_choice("solver", s, SOLVERS)
    check_choice("grid family", family, FAMILIES)
    cells = []
    for solver in solvers:
        explicit = (nfes_by_solver or {}).get(solver)
        for nfe in sorted(set(explicit if explicit is not None else nfes)):
            if nfe < 2:
                raise ValueError(f"D-ODE needs at least 2 network evaluations; got NFE {nfe} for {solver}")
            try:
                spec = GridSpec.for_nfe(family, solver, nfe)
            except ValueError:
                if explicit is not None:
                    raise
                continue
            cells.append({"solver": solver, "nfe": nfe, "grid": spec.to_dict()})
    if not cells:
        raise ValueError(f"no solver in {list(solvers)} can make exactly the NFEs {sorted(nfes)}; "
                         "heun makes odd NFEs only")
    return cells


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


def result_rows(registry: Any, cells: list[dict], teachers: dict[str, str], items: list[tuple[str, str, str]],
                score_ids: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """One row per cell and metric: base, D-ODE and teacher values, the relative change, the guard's scale."""
    scores = [registry.read_json(i) for i in score_ids]
    value = {(s, m): sc["value"] for (s, m, _), sc in zip(items, scores)}
    label = {m: sc["label"] for (_, m, _), sc in zip(items, scores)}
    rows = []
    for c in cells:
        scale = load_lambdas(registry, c["lambdas"]).guard.get("scale")
        for m in metrics:
            base, dode_ = value[(c["base"], m)], value[(c["dode"], m)]
            rows.append({"solver": c["solver"], "nfe": c["nfe"], "metric": m, "label": label[m], "base": base,
                         "dode": dode_, "teacher": value.get((teachers[c["grid"]["family"]], m)),
                         "change_pct": None if base == 0 else 100.0 * (dode_ - base) / base,
                         "guard_scale": scale, "lambdas": registry.get(c["lambdas"]).id})
    return rows
