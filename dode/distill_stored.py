"""D-ODE distillation from precomputed teacher states (Kim et al., 2024, Sec. 4), for teachers run once and reused.

``dode.distill`` runs its own teacher. A pipeline that sweeps several solvers on one student grid runs the
teacher once, on the ``C``-fold refinement of that grid, stores its states at the student grid's noise
levels (``dode.store.trajectory``), and fits each solver's lambdas from those states here: with exact
alignment, the target of student evaluation k is the teacher state at the student grid index
``out_index(k)`` (which sits at teacher index ``out_index(k) * C``), whatever the student solver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .correction import Lambdas
from .distill import fit_guarded
from .sampling import prepare
from .types import Denoiser, Tensor


def distill_from_states(
    denoiser: Denoiser,
    noise: Tensor,
    sigmas: Tensor,
    states: Mapping[int, Tensor],
    solver: str = "euler",
    *,
    teacher: Mapping[str, Any] | None = None,
    guard: bool = True,
    holdout: float = 0.25,
    correction: str = "data",
) -> Lambdas:
    """Fit lambdas for ``solver`` on the student grid ``sigmas`` from teacher ``states``.

    ``states[i]`` is the teacher's state (B, *shape) at student grid index i, from the same unit
    ``noise`` (B, *shape); every index the solver's evaluations land on and the final one must be there.
    ``teacher`` is recorded in the result (how the states were made). With ``guard``, the last
    ``holdout`` fraction of the noise is held out and the fitted lambdas are kept, halved or dropped,
    whichever gives the smallest final error to the teacher there (as ``dode.distill``); given the
    same states, the result equals ``dode.distill(..., alignment="exact")``'s.
    """
    noise, sigmas, solver_, nfe = prepare(noise, sigmas, solver, correction)
    steps = len(sigmas) - 1
    needed = sorted({solver_.out_index(k, steps) for k in range(nfe)})
    missing = [i for i in needed if i not in states]
    if missing:
        raise ValueError(
            f"teacher states at student grid indices {missing} are missing (have {sorted(states)}); "
            f"store the teacher at every index in {needed}"
        )
    for i in needed:
        if tuple(states[i].shape) != tuple(noise.shape):
            raise ValueError(f"teacher state {i} has shape {tuple(states[i].shape)}, the noise {tuple(noise.shape)}")
    targets = [states[solver_.out_index(k, steps)] for k in range(nfe)]
    return fit_guarded(
        denoiser, noise, sigmas, solver, targets, dict(teacher or {}), guard=guard, holdout=holdout, correction=correction
    )
