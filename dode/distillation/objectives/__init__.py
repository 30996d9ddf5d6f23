"""Distillation objectives: how D-ODE's parameters are fitted to the teacher, by name (like ``dode.SOLVERS``).

An objective receives a ``FitProblem`` (denoiser, fit noise, student grid, solver, the teacher's targets
and, for objectives in ``SELECTING``, a selection split) and its own options, and returns a ``FitResult``:
the weights, the grid to sample on, what it reported, and the alternatives the held-out guard
(``dode.distillation.guard``) may choose instead.
Adding an objective is one module here and one entry in ``OBJECTIVES``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from dode.common.config import describe
from dode.distillation.objectives.final import FinalOptions, fit_final
from dode.distillation.objectives.problem import FitProblem, FitResult, Options
from dode.distillation.objectives.step import StepOptions, fit_step

Objective = Callable[..., FitResult]  # objective(problem: FitProblem[, options: ItsOptions]) -> FitResult

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


def options_model(name: str) -> type[Options]:
    """The options model of objective ``name``: the type of its ``options`` parameter (``Options``, none, for an
    objective without one)."""
    return typing.get_type_hints(get_objective(name)).get("options", Options)


def objective_options(name: str, options: Options | Mapping[str, Any] | None) -> Options:
    """``options`` as objective ``name``'s options model (a mapping of its fields, or another objective's model's
    given fields), or one ValueError naming the bad option and what is wrong with it."""
    model = options_model(name)
    if isinstance(options, model):
        return options
    if isinstance(options, Options):
        options = options.model_dump()
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"objective options must be a mapping of option names to values, got {options!r:.80}")
    unknown = sorted(set(options or {}) - set(model.model_fields))
    if unknown:
        raise ValueError(f"objective {name!r} has no option(s) {unknown}; its options are {list(model.model_fields)}")
    try:
        return model.model_validate(dict(options or {}))
    except ValidationError as err:
        raise ValueError(f"objective {name!r}: {describe(err)}") from None


def run_objective(name: str, problem: FitProblem, options: Options) -> FitResult:
    """Objective ``name`` on ``problem`` with its ``options`` (``objective_options``)."""
    fit = get_objective(name)
    if "options" in inspect.signature(fit).parameters:
        return fit(problem, objective_options(name, options))
    return fit(problem)


__all__ = ["OBJECTIVES", "SELECTING", "FinalOptions", "FitProblem", "FitResult", "Objective", "Options",
           "StepOptions", "get_objective", "objective_options", "options_model", "run_objective"]
