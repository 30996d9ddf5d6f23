"""Distillation objectives: how D-ODE's parameters are fitted to the teacher, by name (like ``dode.SOLVERS``).

An objective receives a ``FitProblem`` (denoiser, fit noise, student grid, solver, the teacher's targets
and, for objectives in ``SELECTING``, a selection split) and its own options, and returns a ``FitResult``:
the weights, the grid to sample on, what it reported, and the alternatives the held-out guard
(``dode.distillation.guard``) may choose instead.
Adding an objective is one module here and one entry in ``OBJECTIVES``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from dode.distillation.objectives.final import fit_final
from dode.distillation.objectives.problem import FitProblem, FitResult
from dode.distillation.objectives.step import fit_step

Objective = Callable[..., FitResult]  # objective(problem: FitProblem, **options) -> FitResult

OBJECTIVES: dict[str, Objective] = {
    "step": fit_step,  # greedy closed-form least squares per evaluation (Kim et al., 2024)
    "final": fit_final,  # lambda and timesteps jointly on the final sample, through the unrolled sampler
}
SELECTING: frozenset[str] = frozenset({"final"})  # objectives that select iterations on a selection split


def get_objective(name: str) -> Objective:
    """The registered objective called ``name``; a ValueError listing the valid names otherwise."""
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}") from None


def check_options(name: str, options: Mapping[str, Any] | None) -> Objective:
    """The objective called ``name``, after checking ``options`` are among its keyword options (one ValueError
    naming the valid ones otherwise); values are checked by the objective when it runs."""
    fit = get_objective(name)
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"objective options must be a mapping of option names to values, got {options!r:.80}")
    valid = [p for p in inspect.signature(fit).parameters if p != "problem"]
    unknown = sorted(set(options or {}) - set(valid))
    if unknown:
        raise ValueError(f"objective {name!r} has no option(s) {unknown}; its options are {valid}")
    return fit


__all__ = ["OBJECTIVES", "SELECTING", "FitProblem", "FitResult", "Objective", "check_options", "get_objective"]
