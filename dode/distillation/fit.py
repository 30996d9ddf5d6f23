"""D-ODE distillation: fit the parameters of a base solver against a finer teacher (Kim et al., 2024, Sec. 4).

The teacher (``dode.distillation.teacher``) makes the targets from the same noise; an objective (``dode.distillation.objectives``)
fits the lambdas -- and, for objectives that learn them, the timesteps -- on a fit split, selecting its
iterations on a selection split where it selects; the held-out guard (``dode.distillation.guard``) judges the
candidates on a third split neither saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from dode.common.config import build
from dode.core.correction import Lambdas
from dode.core.gaussian import FirstStep
from dode.core.sampling import prepare
from dode.core.types import Denoiser, Tensor
from dode.distillation.config import STUDENT_SOLVER, FitConfig
from dode.distillation.guard import Features, candidates, select
from dode.distillation.objectives import SELECTING, FitProblem, FitResult, run_objective
from dode.distillation.teacher import TeacherConfig, teacher_states


def distill(
    denoiser: Denoiser,
    noise: Tensor,
    sigmas: Tensor,
    solver: str = STUDENT_SOLVER,
    teacher: TeacherConfig | Mapping[str, Any] | None = None,
    fit: FitConfig | Mapping[str, Any] | None = None,
    *,
    features: Features | None = None,
    first: FirstStep | None = None,
) -> Lambdas:
    """Fit D-ODE lambdas for ``solver`` on ``sigmas`` against a teacher run from the same ``noise``.

    ``teacher`` (``dode.distillation.teacher.TeacherConfig``, or a mapping of its fields) says how the targets are made
    (its seeds make ``noise`` in the flows: ``teacher.noise(shape)``); ``fit`` (``dode.distillation.config.FitConfig``)
    how the lambdas are fitted: the objective (default ``step``, the paper's greedy fit) and its options
    (e.g. ``{"objective": "final", "options": {"learn_sigmas": True}}``), the correction flavour and the
    guard. With the guard the noise is cut in three disjoint splits (``split``): the guard judges the last
    ``holdout`` fraction, objectives that select iterations select on the ``selection`` fraction before it,
    and the rest is fitted on; the guard keeps the base solver unless the fitted parameters or an
    alternative clearly beat it there (``dode.distillation.guard``; ``features``: the feature map of its Frechet
    distance, for objectives ranked by distribution); what it measured is in ``.guard``. Sample on
    ``lam.sigmas`` (the learned grid, or the given one). ``first``: an analytic first step
    (``dode.core.gaussian.FirstStep``): the student's evaluation at sigmas[0] costs no network call; the teacher
    still runs the network from sigmas[0]; the lambdas carry the first step.
    """
    teacher, fit = build(TeacherConfig, teacher), build(FitConfig, fit)
    noise, sigmas, _, _ = prepare(noise, sigmas, solver, fit.correction, first)  # the arrays, validated once
    plan = teacher.plan(sigmas.cpu(), solver, denoiser, first)
    # Teacher: the states at the student's target indices only (bounded memory), from the validated noise.
    states = teacher_states(denoiser, noise, plan)
    problem = split_problem(denoiser, noise, sigmas, solver, [states[i] for i in plan.targets], fit, first)
    return guarded_fit(problem, plan.record(), fit, features)


def split(n: int, fit: FitConfig | Mapping[str, Any] | None = None) -> tuple[int, int, int]:
    """How n noise samples divide into (fit, selection, guard), in that order, under ``fit``: the guard judges
    the last round(holdout n), the selection split (only for an objective that selects its iterations) is the
    round(selection n) before them, each at least one, and at least one sample is fitted on. Without the guard
    every sample is fitted on (and an objective selects on its fit split).

    The defaults give the demo's 256 noises a 96 / 32 / 128 split for the final objective: 128 guard samples
    measure the Frechet distance in 16 dimensions (``dode.distillation.guard.projection``: at least 8 samples per dimension).
    """
    fit = build(FitConfig, fit)
    if not fit.guard:
        return n, 0, 0
    selects = fit.objective in SELECTING
    needed = 3 if selects else 2
    if n < needed:
        raise ValueError(f"the guard needs at least {needed} noise samples (one fitted on, "
                         f"{'one for selection, ' if selects else ''}one held out); pass more noise or guard=False")
    n_guard = min(n - needed + 1, max(1, round(fit.holdout * n)))
    n_selection = min(n - n_guard - 1, max(1, round(fit.selection * n))) if selects else 0
    return n - n_selection - n_guard, n_selection, n_guard


def fit_guarded(
    denoiser: Denoiser,
    noise: Tensor,
    sigmas: Tensor,
    solver: str,
    targets: list[Tensor],
    teacher: dict,
    fit: FitConfig,
    *,
    features: Features | None = None,
    first: FirstStep | None = None,
) -> Lambdas:
    """Fit as ``fit`` says against given teacher ``targets`` (one per evaluation, full batch; the last is
    the teacher's final state), then the held-out guard in ``features``. ``teacher`` is recorded with the
    result. The arrays are validated here, once."""
    noise, sigmas, _, nfe = prepare(noise, sigmas, solver, fit.correction, first)
    problem = split_problem(denoiser, noise, sigmas, solver, checked_targets(noise, nfe, targets), fit, first)
    return guarded_fit(problem, teacher, fit, features)


def checked_targets(noise: Tensor, nfe: int, targets: list[Tensor]) -> list[Tensor]:
    """Teacher targets for validated ``noise`` (``prepare``): one per network evaluation, each of the noise's
    shape, as float64 on its device (what ``split_problem`` takes)."""
    shapes = [tuple(t.shape) for t in targets]
    if len(targets) != nfe or any(shape != tuple(noise.shape) for shape in shapes):
        raise ValueError(f"need {nfe} teacher targets of shape {tuple(noise.shape)}, one per network evaluation; "
                         f"got {len(targets)} of shapes {sorted(set(shapes))}")
    return [t.to(noise.device, torch.float64) for t in targets]


def split_problem(denoiser: Denoiser, noise: Tensor, sigmas: Tensor, solver: str, targets: list[Tensor],
                  fit: FitConfig, first: FirstStep | None = None) -> FitProblem:
    """The fit problem of validated arrays (``prepare``, ``checked_targets``; ``distill``'s own teacher run from
    its validated noise) in its three splits (``split``): fitted on the first n_fit samples, iterations selected
    on the next n_selection; the guard judges the rest."""
    n_fit, n_selection, _ = split(len(noise), fit)
    guarded, final = n_fit + n_selection, targets[-1]
    return FitProblem(denoiser, noise[:n_fit], sigmas, solver, fit.correction, tuple(t[:n_fit] for t in targets),
                      noise[guarded:], final[guarded:], noise[n_fit:guarded], final[n_fit:guarded], first)


def guarded_fit(problem: FitProblem, teacher: dict, fit: FitConfig, features: Features | None) -> Lambdas:
    """The fit (``fit_split``), then the held-out guard in ``features``: the lambdas, ``teacher`` recorded."""
    result, record = fit_split(problem, teacher, fit)
    if not fit.guard:
        return Lambdas(result.values, problem.solver, result.sigmas.tolist(), problem.correction, guard={}, **record)

    # Guard: the base solver unless the result or an alternative clearly beats it on the guard's split.
    chosen, report = select(problem, result, features)
    values, grid = next((v, s) for name, v, s in candidates(problem, result) if name == chosen)
    return Lambdas(values, problem.solver, grid.tolist(), problem.correction, guard=report, **record)


def fit_split(problem: FitProblem, teacher: dict, fit: FitConfig) -> tuple[FitResult, dict]:
    """The fit of ``fit_guarded`` before its guard: the objective's result on ``problem`` without the guard's
    split (the objective never receives it: fitted on the fit split, selecting on the selection split) and what
    the lambdas record about the fit."""
    unguarded = replace(problem, heldout_noise=problem.heldout_noise[:0], heldout_final=problem.heldout_final[:0])
    result = run_objective(fit.objective, unguarded, fit.options)
    record = {"teacher": teacher, "n_fit": len(problem.noise), "objective": fit.objective,
              "options": fit.options.model_dump(), "fit": result.info,
              "first_step": problem.first.to_dict() if problem.first is not None else {}}
    return result, record
