"""Euler (DDIM) and EDM's Heun sampler in sigma space (Karras et al., 2022, Algorithm 1)."""

from __future__ import annotations

from dataclasses import dataclass

from dode.core.solvers.base import OneEvalPerStep, Solver, Stock, push
from dode.core.types import Evaluation, SolverState, Tensor


def euler_update(x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One Euler step of dx/dsigma = (x - D) / sigma; on a VP model this is DDIM (eta = 0)."""
    return denoised + (sigma_next / sigma) * (x - denoised)


@dataclass(frozen=True)
class Euler(OneEvalPerStep):
    """Euler / DDIM (Song et al., 2021): x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (x_i - D_i) / sigma_i."""

    name: str = "euler"
    order: int = 1
    infinite_start = True
    stock = (Stock("EulerDiscreteScheduler", takes="sigmas"), Stock("DDIMScheduler"),  # DDIM: Euler in sigma space
             Stock("FlowMatchEulerDiscreteScheduler", {"shift": 1.0, "use_dynamic_shifting": False,
                                                      "shift_terminal": None}, "sigmas", flow=True))
    official = ("karras", "ddim")

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        return push(state, ev, euler_update(ev.x, denoised, ev.sigma, sigmas[state.k + 1]))


@dataclass(frozen=True)
class Heun(Solver):
    """EDM's deterministic 2nd-order Heun sampler (Karras et al., 2022, Alg. 1): 2 evaluations a step.

    Evaluation 2i (predictor, at sigma_i) gives the Euler state x' at sigma_{i+1}; evaluation 2i+1
    (corrector, at x') gives x_{i+1} = x_i + (sigma_{i+1} - sigma_i)(d_i + d'_i)/2. The last step, to
    sigma = 0, is Euler only, so NFE = 2N - 1. The corrector's d_i uses the raw predictor output.
    """

    name: str = "heun"
    order: int = 2
    evals_per_step = 2
    stock = (Stock("HeunDiscreteScheduler"),)
    official = ("karras",)

    def nfe(self, steps: int) -> int:
        return 2 * steps - 1

    def eval_index(self, k: int, steps: int) -> int:
        return (k + 1) // 2

    def out_index(self, k: int, steps: int) -> int:
        return k // 2 + 1

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        if state.k % 2 == 0:
            # Predictor: Euler step to the next noise level.
            return push(state, ev, euler_update(ev.x, denoised, ev.sigma, sigmas[state.k // 2 + 1]))
        # Corrector: average the slopes at both ends of the step.
        pred = state.history[-1]
        d = (pred.x - pred.denoised) / pred.sigma
        d_prime = (ev.x - denoised) / ev.sigma
        return push(state, ev, pred.x + (ev.sigma - pred.sigma) * (d + d_prime) / 2)
