"""The solver protocol: a solver is a pure map from (grid, state, evaluation) to the next state.

Evaluation k is made at ``state.x`` and noise level ``sigmas[eval_index(k)]``; the update that follows
it produces the state at ``sigmas[out_index(k)]``. The update must be affine in ``denoised`` (the
D-ODE-corrected output of evaluation k); earlier evaluations enter through ``state.history`` raw.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from dode.core.types import Evaluation, SolverState, Tensor

MAX_HISTORY = 4


class Solver(Protocol):
    name: str
    order: int  # the method's order (its highest; warm starts and final steps use lower ones)
    evals_per_step: int  # network evaluations per grid step, diffusers' scheduler ``order`` (Heun: 2)

    def nfe(self, steps: int) -> int:
        """Network evaluations for a grid of ``steps`` steps (len(sigmas) - 1)."""

    def eval_index(self, k: int, steps: int) -> int:
        """Index into sigmas of the noise level at which evaluation k is made."""

    def out_index(self, k: int, steps: int) -> int:
        """Index into sigmas of the state produced by the update after evaluation k."""

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        """The update after evaluation ``ev`` (raw), using ``denoised`` (corrected) in its place."""


class OneEvalPerStep:
    """Mixin for solvers that evaluate once per grid step: evaluation k at sigma_k, result at sigma_{k+1}."""

    evals_per_step = 1

    def nfe(self, steps: int) -> int:
        return steps

    def eval_index(self, k: int, steps: int) -> int:
        return k

    def out_index(self, k: int, steps: int) -> int:
        return k + 1


def push(state: SolverState, ev: Evaluation, x: Tensor, carry: tuple[Tensor, ...] = ()) -> SolverState:
    """The next state: new x, one more evaluation done, the raw evaluation appended to the history."""
    return replace(state, x=x, k=state.k + 1, history=(*state.history, ev)[-MAX_HISTORY:], carry=carry)
