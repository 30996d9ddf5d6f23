"""The parameters of each orchestrated stage, checked before any work: one ValueError naming the first bad one.

A stage's check takes its parameters by name, defaults filled in (a flow's bound arguments). The flows call
theirs first, and ``dode run`` calls it before it starts a flow run (``flows.cli.STAGES``), so bad input
gives one clear error, not a failed run. Types are Prefect's to check (from the flow signature); these are
the choices, ranges and combinations the types cannot say, objective options' values included
(``check_objective``: the objective's own checks, run on a probe before any teacher is computed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .correction import ALIGNMENTS, CORRECTIONS
from .gaussian import FIRST_STEPS
from .grids import FAMILIES, GridSpec
from .metrics.scores import check_metrics
from .models import check_model_name
from .objectives import check_options
from .rng import MAX_SEED
from .solvers import SOLVERS
from .sweep import check_choice, plan_cells, plan_variants

Params = Mapping[str, Any]


def check_positive(p: Params, *names: str) -> None:
    bad = [n for n in names if p.get(n) is not None and p[n] < 1]
    if bad:
        raise ValueError(f"{', '.join(bad)} must be >= 1")


def check_seeds(p: Params) -> None:
    """Seed ranges: first seed and count within the seeds noise can be drawn for (0 .. MAX_SEED)."""
    for first, count in (("distill_seed", "n_distill"), ("first_seed", "n_samples")):
        if p.get(first) is not None and not 0 <= p[first] <= MAX_SEED - (p.get(count) or 0):
            raise ValueError(f"{first} must be in 0 .. {MAX_SEED} - {count}, got {p[first]}")


class OptionsChecked(Exception):
    """Raised by ``Probe`` when an objective first reads its problem: its own option checks have passed."""


class Probe:
    """A stand-in fit problem whose first use raises ``OptionsChecked`` (no model, no teacher needed)."""

    def __getattr__(self, name: str) -> Any:
        raise OptionsChecked(name)


def check_objective(name: str, options: Mapping[str, Any] | None) -> None:
    """The objective's option names (``check_options``) and values: the objective runs on a ``Probe`` until it
    first reads the problem, so the checks it makes of its options before fitting run now, before any work."""
    fit = check_options(name, options)
    try:
        fit(Probe(), **dict(options or {}))
    except OptionsChecked:
        return
    except TypeError as err:
        raise ValueError(f"objective {name!r}: {err}") from None


def check_teacher(p: Params) -> None:
    """The teacher: its solver, its refinement factor, how many samples and how they are batched."""
    check_model_name(p["model"])
    check_choice("teacher solver", p["teacher_solver"], SOLVERS)
    check_positive(p, "teacher_factor", "n_distill", "batch_size")
    check_seeds(p)


def check_fit(p: Params) -> None:
    """The distillation: correction flavour, objective, held-out fraction for the guard."""
    check_teacher(p)
    check_choice("correction", p["correction"], CORRECTIONS)
    check_objective(p["objective"], p["objective_options"])
    check_alignment(p.get("alignment", "exact"), p.get("solvers") or [p.get("solver")], p["family"])
    if not 0 < p["holdout"] < 1:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {p['holdout']}")


def check_pipeline(p: Params) -> None:
    check_fit(p)
    check_metrics(p["metrics"])
    check_positive(p, "n_samples", "num_shards")
    plan_cells(list(p["solvers"]), list(p["nfes"]), p["nfes_by_solver"], p["family"])
    plan_variants(p["variants"])


def check_teacher_stage(p: Params) -> None:
    check_teacher(p)
    check_choice("grid family", p["family"], FAMILIES)
    check_positive(p, "steps")


def check_calls(p: Params) -> None:
    """One solver at ``nfe`` network calls with ``first_step`` (an analytic first step needs exact alignment)."""
    first = p.get("first_step") or "network"
    check_choice("first step", first, FIRST_STEPS)
    if first == "network":
        plan_cells([p["solver"]], [], {p["solver"]: [p["nfe"]]}, p["family"])
        return
    check_choice("solver", p["solver"], SOLVERS)
    check_choice("grid family", p["family"], FAMILIES)
    GridSpec.for_calls(p["family"], p["solver"], p["nfe"], first)
    if p.get("alignment", "exact") != "exact":
        raise ValueError("an analytic first step needs alignment=exact")


def check_distill(p: Params) -> None:
    check_fit(p)
    check_calls(p)


def check_sample(p: Params) -> None:
    check_model_name(p["model"])
    check_positive(p, "n_samples", "batch_size", "num_shards")
    check_seeds(p)
    if p["lambdas"] is None:
        if p["solver"] is None or p["nfe"] is None:
            raise ValueError("give solver and nfe (base sampling), or lambdas=<lambdas artifact id>")
        check_calls(p)
        if (p.get("first_step") or "network") != "network" and not p.get("gaussian"):
            raise ValueError("an analytic first step needs gaussian=<gaussian artifact id> (dode gaussian)")
    elif p["solver"] is not None or p["nfe"] is not None or p.get("gaussian") or (p.get("first_step") or
                                                                                   "network") != "network":
        raise ValueError("lambdas fix the solver, grid and first step; drop solver/nfe/first_step/gaussian when "
                         "sampling with lambdas")


def check_score(p: Params) -> None:
    check_model_name(p["model"])
    check_metrics(p["metrics"])
    check_positive(p, "n_samples", "batch_size", "num_shards")
    if p["samples"] and p["lambdas"]:
        raise ValueError("give samples (to score them) or lambdas (to re-evaluate them), not both")


def check_reference(registry: Any, reference: str | None) -> None:
    """A given reference must be a "reference-stats" artifact of this registry (checked before any work)."""
    if reference is None:
        return
    art = registry.get(reference)
    if art.kind != "reference-stats":
        raise ValueError(f"reference {art.short} is a {art.kind!r} artifact, not 'reference-stats'; pass the id "
                         "of feature statistics (dode fid --register, or a pipeline run's reference-stats)")


def check_alignment(alignment: str, solvers: list[str], family: str) -> None:
    """``official`` alignment exists for the reference code's cases only: euler and heun on Karras grids."""
    check_choice("alignment", alignment, ALIGNMENTS)
    if alignment == "official" and (family != "karras" or set(solvers) - {"euler", "heun"}):
        raise ValueError("official alignment (the reference code's Euler teacher) is defined for the solvers euler "
                         "and heun on karras grids here; use alignment=exact for "
                         f"{sorted(set(solvers) - {'euler', 'heun'}) or family}")
