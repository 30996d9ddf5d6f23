"""D-ODE distillation: fit the parameters of a base solver against a finer teacher (Kim et al., 2024, Sec. 4).

The teacher (``dode.teacher``) makes the targets from the same noise; an objective (``dode.objectives``)
fits the lambdas -- and, for objectives that learn them, the timesteps -- on a fit split; the held-out
guard (``dode.guard``) keeps whichever candidate does best on the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .correction import Lambdas
from .gaussian import FirstStep
from .guard import Features, candidates, select
from .objectives import FitProblem, check_options
from .sampling import prepare
from .teacher import TeacherSpec, teacher_states
from .types import Denoiser, Tensor


def distill(
    denoiser: Denoiser,
    noise: Tensor,
    sigmas: Tensor,
    solver: str = "euler",
    teacher_factor: int = 10,
    alignment: str = "exact",
    guard: bool = True,
    correction: str = "data",
    *,
    teacher_solver: str | None = None,
    holdout: float = 0.25,
    objective: str = "step",
    objective_options: Mapping[str, Any] | None = None,
    features: Features | None = None,
    first: FirstStep | None = None,
    **options: Any,
) -> Lambdas:
    """Fit D-ODE lambdas for ``solver`` on ``sigmas`` against a teacher run from the same ``noise``.

    ``objective`` picks how (``dode.objectives.OBJECTIVES``; default ``step``, the paper's greedy fit);
    its options come as ``objective_options`` and/or keyword arguments (e.g. ``objective="final",
    learn_sigmas=True``). With ``guard`` a ``holdout`` fraction of the noise is not fitted on and the
    guard picks among the fitted parameters, its alternatives and the base solver there (``features``:
    the feature map of the guard's Frechet distance, for objectives ranked by distribution); what it
    measured is in ``.guard``. Sample on ``lam.sigmas`` (the learned grid, or the given one). ``first``: an
    analytic first step (``dode.gaussian.FirstStep``): the student's evaluation at sigmas[0] costs no network
    call; the teacher still runs the network from sigmas[0]; the lambdas carry the first step.
    """
    noise, sigmas, _, _ = prepare(noise, sigmas, solver, correction, first)
    plan = TeacherSpec(teacher_solver, teacher_factor, alignment).plan(sigmas.cpu(), solver, denoiser, first)
    # Teacher: the states at the student's target indices only (bounded memory).
    states = teacher_states(denoiser, noise, plan)
    targets = [states[i] for i in plan.targets]
    return fit_guarded(denoiser, noise, sigmas, solver, targets, plan.record(), guard=guard, holdout=holdout,
                       correction=correction, objective=objective, options={**(objective_options or {}), **options},
                       features=features, first=first)


def split(n: int, guard: bool, holdout: float) -> int:
    """How many of n noise samples the guard holds out (the last ones)."""
    if not guard:
        return 0
    if n < 2:
        raise ValueError("the guard needs at least 2 noise samples (one held out); pass more noise or guard=False")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    return min(n - 1, max(1, round(holdout * n)))


def fit_guarded(
    denoiser: Denoiser,
    noise: Tensor,
    sigmas: Tensor,
    solver: str,
    targets: list[Tensor],
    teacher: dict,
    *,
    guard: bool = True,
    holdout: float = 0.25,
    correction: str = "data",
    objective: str = "step",
    options: Mapping[str, Any] | None = None,
    features: Features | None = None,
    first: FirstStep | None = None,
) -> Lambdas:
    """Fit with ``objective`` against given teacher ``targets`` (one per evaluation, full batch; the last is
    the teacher's final state), then the held-out guard. ``teacher`` is recorded with the result."""
    noise, sigmas, _, nfe = prepare(noise, sigmas, solver, correction, first)
    if len(targets) != nfe or any(t.shape != noise.shape for t in targets):
        raise ValueError(f"need {nfe} teacher targets of shape {tuple(noise.shape)}, one per network evaluation")
    options = dict(options or {})
    n_fit = len(noise) - split(len(noise), guard, holdout)
    targets = [t.to(noise.device, torch.float64) for t in targets]

    # Fit on the first n_fit samples; the rest is held out.
    problem = FitProblem(denoiser, noise[:n_fit], sigmas, solver, correction, tuple(t[:n_fit] for t in targets),
                         noise[n_fit:], targets[-1][n_fit:], first)
    result = check_options(objective, options)(problem, **options)
    record = {"teacher": teacher, "n_fit": n_fit, "objective": objective, "options": options, "fit": result.info,
              "first_step": first.to_dict() if first is not None else {}}
    if not guard:
        return Lambdas(result.values, solver, result.sigmas.tolist(), correction, guard={}, **record)

    # Guard: the result, its alternatives or the base solver, by their held-out error to the teacher.
    chosen, report = select(problem, result, features)
    values, grid = next((v, s) for name, v, s in candidates(problem, result) if name == chosen)
    return Lambdas(values, solver, grid.tolist(), correction, guard=report, **record)

