"""A sweep's plan and bookkeeping: its (solver, NFE, grid) cells, the sampling jobs and scores they need,
and the result rows. Pure functions of JSON-able configs (registry ids, ``GridSpec.to_dict()`` grids):
the flows run them as tasks, a plain loop can run them the same way.

Each cell's student grid is ``GridSpec.for_nfe(family, solver, nfe)``; each cell is compared with its own
teacher's samples (``teacher_key``), drawn on the finest teacher grid among the cells that share it, the
``factor``-fold step count of their largest student grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from dode.common.config import Int, build
from dode.core.gaussian import NETWORK
from dode.core.grids import FAMILIES, GridSpec
from dode.core.solvers import SOLVERS
from dode.distillation.config import FIRST_STEP, FirstStepKind, ObjectiveChoice, ObjectiveName, Solver
from dode.metrics.spread import with_spread
from dode.pipeline.generate import SamplingConfig, SamplingJob
from dode.store.lambdas import load_lambdas


class Variant(ObjectiveChoice):
    """A fit compared beside base and D-ODE: its objective and options, the cells it applies to (``solvers``,
    ``nfes``: all when empty) and its first step (at the cell's network calls)."""

    objective: ObjectiveName = Field(description="distillation objective (dode.distillation.objectives)")
    solvers: tuple[Solver, ...] = Field((), description="the solvers it is fitted for (default: all)")
    nfes: tuple[Int, ...] = Field((), description="the NFEs it is fitted for (default: all)")
    first_step: FirstStepKind = Field(FIRST_STEP, description="network, analytic or flowmap")


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


def teacher_key(cell: dict) -> str:
    """Which teacher's samples a cell is compared with: its grid family and its own teacher (solver, factor)."""
    return f"{cell['grid']['family']}/{cell['teacher']['solver']}-x{cell['teacher']['factor']}"


def teacher_job(model: str, cells: list[dict], sampling: SamplingConfig) -> dict:
    """The teacher's own samples on the eval seeds for cells that share a teacher: its solver on the finest
    teacher grid among them (the ``factor``-fold step count of their largest student grid; for Karras grids,
    its exact refinement)."""
    teacher, steps = cells[0]["teacher"], max(c["grid"]["steps"] for c in cells)
    grid = GridSpec(cells[0]["grid"]["family"], teacher["factor"] * steps).to_dict()
    return SamplingJob(model, teacher["solver"], grid, None, sampling.n_samples, sampling.first_seed,
                       sampling.batch_size).to_dict()


def plan_variants(variants: Mapping[str, Variant | Mapping[str, Any]] | None) -> dict[str, dict]:
    """Extra fits compared beside base and D-ODE, by name: each a ``Variant`` (or a mapping of its fields:
    objective, options, solvers, nfes, first_step), e.g. the timesteps-only and lambda + timesteps variants of
    the ``final`` objective, as plain dicts (options: those given). Validated here, before anything runs."""
    plan = {}
    for name, v in (variants or {}).items():
        if name in ("base", "dode", "teacher") or str(name).startswith("base+"):
            raise ValueError(f"variant name {name!r} is taken (base, dode, teacher, and base+ for the base solver "
                             "with a first step); choose another")
        try:
            v = build(Variant, v)
        except ValueError as err:
            raise ValueError(f"variant {name!r}: {str(err).removeprefix('Variant: ')}") from None
        plan[str(name)] = {"objective": v.objective, "options": v.options.model_dump(), "solvers": list(v.solvers),
                           "nfes": list(v.nfes), "first_step": v.first_step}
    return plan


def variant_grid(variant: dict, cell: dict) -> dict:
    """A variant's student grid in a cell: the cell's, or with an analytic first step the grid on which the
    solver makes the cell's network calls (``GridSpec.for_calls``)."""
    if variant["first_step"] == NETWORK:
        return cell["grid"]
    return GridSpec.for_calls(cell["grid"]["family"], cell["solver"], cell["nfe"], variant["first_step"]).to_dict()


def variant_applies(variant: dict, cell: dict) -> bool:
    """Whether a variant (``plan_variants``) is fitted for a cell (not where its first step makes the network
    calls impossible, e.g. heun's evaluations are odd)."""
    if variant["solvers"] and cell["solver"] not in variant["solvers"] or variant["nfes"] and cell["nfe"] not in variant["nfes"]:
        return False
    try:
        variant_grid(variant, cell)
    except ValueError:
        return False
    return True


def first_bases(cell: dict, variants: dict[str, dict]) -> dict[str, dict]:
    """The base solver with each first step a cell's variants use, by side name ("base+analytic"): its grid
    and first step, so every first-step variant is compared with its own base."""
    return {f"base+{v['first_step']}": {"grid": variant_grid(v, cell), "first_step": v["first_step"]}
            for v in variants.values() if v["first_step"] != NETWORK and variant_applies(v, cell)}


def cell_fits(cell: dict) -> dict[str, str]:
    """A cell's fitted lambdas by side: "dode" (the sweep's objective) and its variants."""
    return {"dode": cell["lambdas"], **cell.get("variants", {})}


def sampling_jobs(model: str, cells: list[dict], sampling: SamplingConfig) -> tuple[list[str], list[dict]]:
    """(teacher keys, jobs): one teacher job per grid family and teacher (``teacher_key``) first, then per cell
    base, D-ODE and its variants."""
    keys = sorted({teacher_key(c) for c in cells})
    jobs = [teacher_job(model, [c for c in cells if teacher_key(c) == key], sampling) for key in keys]
    n, seed, batch = sampling.n_samples, sampling.first_seed, sampling.batch_size
    for c in cells:
        base = SamplingJob(model, c["solver"], c["grid"], None, n, seed, batch).to_dict()
        jobs += [base, *({**base, "grid": None, "lambdas_id": lam} for lam in cell_fits(c).values())]  # theirs
        jobs += [SamplingJob(model, c["solver"], f["grid"], None, n, seed, batch, f["first_step"],
                             c["gaussian"]).to_dict() for f in c.get("first_bases", {}).values()]
    return keys, jobs


def with_samples(cells: list[dict], keys: list[str], ids: list[str]) -> tuple[list[dict], dict[str, str]]:
    """The sampled ids (in ``sampling_jobs`` order) put back: each cell's samples by side ("base", "dode" and
    its variants, also as cell["base"] / cell["dode"]), and the teachers' samples by ``teacher_key``."""
    rest, out = iter(ids[len(keys):]), []
    for c in cells:
        samples = {side: next(rest) for side in ("base", *cell_fits(c), *c.get("first_bases", {}))}
        out.append({**c, "samples": samples, "base": samples["base"], "dode": samples["dode"]})
    return out, dict(zip(keys, ids[: len(keys)]))


def score_items(cells: list[dict], teachers: dict[str, str], refs: dict[str, str],
                metrics: list[str]) -> list[tuple[str, str, str]]:
    """(samples id, metric, reference id) to score: Fréchet distances against ``refs`` (teacher samples
    too), RMSE against the samples of the cell's own teacher."""
    items = [(t, m, refs[m]) for t in teachers.values() for m in refs]
    for c in cells:
        teacher = teachers[teacher_key(c)]
        items += [(sid, m, refs.get(m, teacher)) for sid in c["samples"].values() for m in metrics]
    return items


def result_rows(registry: Any, cells: list[dict], teachers: dict[str, str], items: list[tuple[str, str, str]],
                score_ids: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """One row per cell and metric: base, D-ODE, each variant and teacher values, D-ODE's relative change,
    which candidate each guard chose, and each side's spread over the disjoint evaluation sets (``spread``:
    side -> standard deviation; ``dode.metrics.spread``)."""
    scores = [registry.read_json(i) for i in score_ids]
    value = {(s, m): sc["value"] for (s, m, _), sc in zip(items, scores)}
    spreads = {(s, m): sc.get("spread") for (s, m, _), sc in zip(items, scores)}
    label = {m: sc["label"] for (_, m, _), sc in zip(items, scores)}
    rows = []
    for c in cells:
        chosen = {side: load_lambdas(registry, lam).guard.get("chosen") for side, lam in cell_fits(c).items()}
        for m in metrics:
            base, dode_ = value[(c["base"], m)], value[(c["dode"], m)]
            variants = {side: value[(sid, m)] for side, sid in c["samples"].items() if side not in ("base", "dode")}
            rows.append({"solver": c["solver"], "nfe": c["nfe"], "metric": m, "label": label[m], "base": base,
                         "dode": dode_, "variants": variants, "teacher": value.get((teachers[teacher_key(c)], m)),
                         "change_pct": None if base == 0 else 100.0 * (dode_ - base) / base,
                         "guard": chosen, "lambdas": registry.get(c["lambdas"]).id,
                         "spread": {**{side: spreads[(sid, m)] for side, sid in c["samples"].items()},
                                    "base": spreads[(c["base"], m)], "dode": spreads[(c["dode"], m)],
                                    "teacher": spreads.get((teachers[teacher_key(c)], m))}})
    return rows


def own_base(variant: dict) -> str:
    """The side a variant is judged against: the base solver with the same first step."""
    return "base" if variant["first_step"] == NETWORK else f"base+{variant['first_step']}"


def sibling(name: str, variants: dict[str, dict]) -> str | None:
    """A lambda + timesteps variant's timesteps-only sibling: the variant of the same objective and first step
    that does not learn lambda (None when there is none, or this one is it)."""
    v = variants[name]
    if v["options"].get("learn_lambdas", True) is False:
        return None
    return next((other for other, w in variants.items() if other != name and w["objective"] == v["objective"]
                 and w["first_step"] == v["first_step"] and w["options"].get("learn_lambdas", True) is False), None)


def few_step_summary(rows: list[dict], variants: dict[str, dict], metric: str, tolerance: float = 1.05) -> list[str]:
    """What a sweep says about few network calls, in ``metric`` (lower is better), as printable lines: per
    network-call count the best stock solver, the best of everything (with its side) and the teacher; then
    how many variant cells are within ``tolerance`` of their own base and of their timesteps-only sibling,
    or were given back the base by the guard (the failures listed); then how often a guard that changed the
    base agreed with ``metric`` (its variant no worse than its own base). Values carry their spread over the
    disjoint evaluation sets where the rows have it."""
    rows = [r for r in rows if r["metric"] == metric]
    lines = [f"few-step summary ({metric}): network calls, best stock solver, best overall, teacher"]
    for nfe in sorted({r["nfe"] for r in rows}):
        cells = [r for r in rows if r["nfe"] == nfe]
        stock = min(cells, key=lambda r: r["base"])
        sides = [(value, f"{r['solver']} {side}", r.get("spread", {}).get(side)) for r in cells
                 for side, value in (("base", r["base"]), ("dode", r["dode"]), *r["variants"].items())]
        best = min(sides, key=lambda s: s[:2])
        teacher = cells[0]
        lines.append(f"  {nfe}: {with_spread(stock['base'], stock.get('spread', {}).get('base'))} ({stock['solver']}), "
                     f"{with_spread(best[0], best[2])} ({best[1]}), teacher "
                     f"{with_spread(teacher['teacher'], teacher.get('spread', {}).get('teacher'))}")
    held, failures, changed, agreed = 0, [], 0, 0
    for r in rows:
        for name in (n for n in variants if n in r["variants"]):
            value, base = r["variants"][name], r["variants"].get(own_base(variants[name]), r["base"])
            twin = sibling(name, variants)
            kept_base = r["guard"].get(name) == "base"
            ok = kept_base or (value <= tolerance * base and (twin not in r["variants"]
                                                               or value <= tolerance * r["variants"][twin]))
            held += ok
            if not ok:
                failures.append(f"{r['solver']} {r['nfe']} {name}: {value:.4g} (own base {base:.4g}"
                                + (f", {twin} {r['variants'][twin]:.4g})" if twin in r["variants"] else ")"))
            if not kept_base:
                changed, agreed = changed + 1, agreed + (value <= base)
    total = sum(n in r["variants"] for r in rows for n in variants)
    lines.append(f"variant cells within {tolerance}x of their own base and timesteps-only sibling, or given the "
                 f"base by the guard: {held} of {total}" + "".join(f"\n  not: {f}" for f in failures))
    lines.append(f"guard changed the base in {changed} variant cells; {metric} agreed (no worse than the own base) "
                 f"in {agreed} of them")
    return lines
