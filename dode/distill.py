"""D-ODE distillation: fit one lambda per network evaluation against a finer teacher (Kim et al., 2024, Sec. 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .correction import ALIGNMENTS, Lambdas, fit_lambda
from .sampling import Update, integrate, prepare, sample
from .schedules import is_karras, karras_sigmas, refine, vp_sigmas
from .types import Denoiser, Tensor

GUARD_SCALES = (1.0, 0.5, 0.0)  # candidate shrinkages of the fitted lambdas; 0 is the base solver
# Default teacher: the student's own solver, except where its states at multiples of the factor would be
# intermediate (lower-order) stages: DPM-Solver-3 groups three grid steps, so a factor of 10 splits them.
DEFAULT_TEACHER = {"dpm_solver_3": "dpmpp_3m"}


@dataclass(frozen=True)
class TeacherPlan:
    """Where the targets come from: the teacher's grid and solver, and for each student evaluation k
    the teacher grid index whose state is its target."""

    sigmas: Tensor
    solver: str
    targets: tuple[int, ...]
    alignment: str
    factor: int

    def record(self) -> dict:
        return {"solver": self.solver, "factor": self.factor, "alignment": self.alignment, "steps": len(self.sigmas) - 1}


def teacher_plan(
    denoiser: Denoiser, sigmas: Tensor, solver: str, factor: int, alignment: str, teacher_solver: str | None
) -> TeacherPlan:
    """The teacher for a student grid.

    ``exact``: the teacher runs on the ``factor``-fold refinement of the student grid, so the state
    after student evaluation k has a teacher state at exactly the same sigma. ``official`` reproduces
    the reference code's indexing (method.md Sec. 3): an Euler teacher on a fresh grid of
    factor x NFE steps of the same family, target of evaluation k at teacher index (k + 1) x factor.
    """
    _, sigmas, solver_, nfe = prepare(torch.zeros(1, 1), sigmas, solver, "data")
    steps = len(sigmas) - 1
    if factor < 1:
        raise ValueError(f"teacher_factor must be a positive integer, got {factor}")
    if alignment == "exact":
        targets = tuple(solver_.out_index(k, steps) * factor for k in range(nfe))
        teacher = teacher_solver or DEFAULT_TEACHER.get(solver, solver)
        return TeacherPlan(refine(sigmas, factor), teacher, targets, alignment, factor)
    if alignment != "official":
        raise ValueError(f"unknown alignment {alignment!r}; choose one of {list(ALIGNMENTS)}")
    if teacher_solver not in (None, "euler"):
        raise ValueError("official alignment uses the reference code's Euler teacher; drop teacher_solver")
    if solver in ("euler", "heun") and is_karras(sigmas):
        fine = karras_sigmas(factor * nfe, float(sigmas[-2]), float(sigmas[0]))
        return TeacherPlan(fine, "euler", tuple((k + 1) * factor for k in range(nfe)), alignment, factor)
    table = getattr(denoiser, "sigmas_train", None)
    if solver == "euler" and table is not None:
        abar = 1 / (1 + table.to(torch.float64) ** 2)
        if torch.allclose(sigmas, vp_sigmas(abar, steps, "ddim").to(sigmas), rtol=1e-9):
            fine_steps = min(len(table), factor * steps)
            fine = vp_sigmas(abar, fine_steps, "ddim")
            targets = tuple(min((k + 1) * factor, fine_steps) for k in range(nfe - 1)) + (fine_steps,)
            return TeacherPlan(fine, "euler", targets, alignment, factor)
    raise ValueError(
        "official alignment is defined for 'euler' and 'heun' on Karras grids (dode.karras_sigmas) and for "
        "'euler' on the DDIM integer grid of a discrete model (dode.vp_sigmas(..., 'ddim')); "
        "use alignment='exact' for anything else"
    )


def teacher_states(
    denoiser: Denoiser, noise: Tensor, plan: TeacherPlan, keep: set[int] | None = None
) -> dict[int, Tensor]:
    """Run the teacher from ``noise`` and keep only the states at grid indices ``keep`` (streamed)."""
    keep = set(plan.targets) | {0} if keep is None else keep
    states = {0: noise.to(torch.float64) * plan.sigmas[0].to(noise.device)} if 0 in keep else {}

    def hold(index: int, x: Tensor, ev: object) -> None:
        if index in keep:
            states[index] = x

    sample(denoiser, noise, plan.sigmas, plan.solver, on_state=hold)
    return states


def fit(
    denoiser: Denoiser,
    noise: Tensor,
    sigmas: Tensor,
    solver: str,
    targets: list[Tensor],
    *,
    correction: str = "data",
) -> tuple[list[float], Tensor]:
    """Greedy closed-form fit: for each evaluation k, lambda_k = <d, r> / <d, d> pooled over the batch.

    The next state is affine in lambda_k (every solver update is affine in the corrected output), so
    d = x(lambda=1) - x(lambda=0) and r = target_k - x(lambda=0) come from one network evaluation.
    Returns the lambdas and the final state reached with them.
    """
    values: list[float] = []

    def greedy(k: int, update: Update) -> float:
        x_plain = update(0.0).x
        lam = fit_lambda(update(1.0).x - x_plain, targets[k] - x_plain)
        values.append(lam)
        return lam

    final = integrate(denoiser, noise, sigmas, solver, greedy, correction=correction)
    return values, final


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
) -> Lambdas:
    """Fit D-ODE lambdas for ``solver`` on ``sigmas`` against a teacher run from the same ``noise``.

    With ``guard`` a ``holdout`` fraction of the noise is not fitted on; the fitted lambdas are kept,
    halved or dropped, whichever gives the smallest final error to the teacher there, so the result
    is never worse than the base solver on held-out noise. What the guard measured is in ``.guard``.
    """
    noise, sigmas, _, _ = prepare(noise, sigmas, solver, correction)
    plan = teacher_plan(denoiser, sigmas.cpu(), solver, teacher_factor, alignment, teacher_solver)
    # Teacher: the states at the student's target indices only (bounded memory).
    states = teacher_states(denoiser, noise, plan)
    targets = [states[i] for i in plan.targets]
    return fit_guarded(
        denoiser, noise, sigmas, solver, targets, plan.record(), guard=guard, holdout=holdout, correction=correction
    )


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
) -> Lambdas:
    """The greedy fit against given teacher ``targets`` (one per evaluation, full batch; the last is
    the teacher's final state), then the held-out guard. ``teacher`` is recorded with the result."""
    noise, sigmas, _, nfe = prepare(noise, sigmas, solver, correction)
    if len(targets) != nfe or any(t.shape != noise.shape for t in targets):
        raise ValueError(f"need {nfe} teacher targets of shape {tuple(noise.shape)}, one per network evaluation")
    n_hold = 0
    if guard:
        if len(noise) < 2:
            raise ValueError("the guard needs at least 2 noise samples (one held out); pass more noise or guard=False")
        n_hold = min(len(noise) - 1, max(1, round(holdout * len(noise))))
    n_fit = len(noise) - n_hold
    targets = [t.to(noise.device, torch.float64) for t in targets]

    # Greedy closed-form fit, one evaluation at a time.
    values, _ = fit(denoiser, noise[:n_fit], sigmas, solver, [t[:n_fit] for t in targets], correction=correction)
    grid = sigmas.tolist()
    if not guard:
        return Lambdas(values, solver, grid, correction, teacher, {}, n_fit)

    # Guard: keep, shrink or drop the lambdas by their final error to the teacher on held-out noise.
    errors = {}
    for scale in GUARD_SCALES:
        lam = Lambdas([scale * v for v in values], solver, grid, correction)
        x = sample(denoiser, noise[n_fit:], sigmas, solver, lam if scale else None, correction=correction)
        errors[scale] = float((x - targets[-1][n_fit:]).square().mean())
    best = min(GUARD_SCALES, key=lambda s: (errors[s], -s))
    report = {
        "holdout": n_hold,
        "scale": best,
        "changed": best != 1.0,
        "fitted": list(values),
        "mse": {str(s): e for s, e in errors.items()},
    }
    return Lambdas([best * v for v in values], solver, grid, correction, teacher, report, n_fit)
