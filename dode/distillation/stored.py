"""D-ODE distillation from precomputed teacher states (Kim et al., 2024, Sec. 4), for teachers run once and reused.

``dode.distill`` runs its own teacher. A pipeline that sweeps several solvers on one student grid runs the
teacher once (``dode.distillation.teacher.TeacherPlan.on_student_grid``), stores its states at the student grid's noise
levels (``dode.store.trajectory``), and fits each solver's parameters from those states here: with exact
alignment, the target of student evaluation k is the teacher state at student grid index ``out_index(k)``
(``dode.distillation.teacher.student_targets``), whatever the student solver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dode.common.config import build
from dode.core.correction import Lambdas
from dode.core.gaussian import FirstStep
from dode.core.sampling import prepare
from dode.core.types import Denoiser, Tensor
from dode.distillation.config import STUDENT_SOLVER, FitConfig
from dode.distillation.fit import checked_targets, guarded_fit, split_problem
from dode.distillation.guard import Features
from dode.distillation.teacher import student_targets


def distill_from_states(
    denoiser: Denoiser,
    noise: Tensor,
    sigmas: Tensor,
    states: Mapping[int, Tensor],
    solver: str = STUDENT_SOLVER,
    *,
    teacher: Mapping[str, Any] | None = None,
    fit: FitConfig | Mapping[str, Any] | None = None,
    features: Features | None = None,
    first: FirstStep | None = None,
) -> Lambdas:
    """Fit lambdas for ``solver`` on the student grid ``sigmas`` from teacher ``states``.

    ``states[i]`` is the teacher's state (B, *shape) at student grid index i, from the same unit
    ``noise`` (B, *shape); every index the solver's evaluations land on and the final one must be there.
    ``teacher`` is recorded in the result (how the states were made). ``fit`` (``dode.distillation.config.FitConfig``),
    ``features`` and ``first`` as in ``dode.distill``; given the same states, the result equals
    ``dode.distill``'s with exact alignment.
    """
    fit = build(FitConfig, fit)
    noise, sigmas, _, nfe = prepare(noise, sigmas, solver, fit.correction, first)  # the arrays, validated once
    wanted = student_targets(solver, len(sigmas) - 1, first)
    missing = sorted(set(wanted) - set(states))
    if missing:
        raise ValueError(
            f"teacher states at student grid indices {missing} are missing (have {sorted(states)}); "
            f"store the teacher at every index in {sorted(set(wanted))}"
        )
    targets = checked_targets(noise, nfe, [states[i] for i in wanted])
    problem = split_problem(denoiser, noise, sigmas, solver, targets, fit, first)
    return guarded_fit(problem, dict(teacher or {}), fit, features)
