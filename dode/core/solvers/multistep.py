"""Linear multistep solvers in sigma space: iPNDM (Zhang & Chen, 2023) and DPM-Solver++(2M/3M) (Lu et al.)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dode.core.solvers.base import OneEvalPerStep, Stock, push
from dode.core.types import Evaluation, SolverState, Tensor

IPNDM_COEFFS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))
LOWER_ORDER_BELOW = 15  # grids with fewer steps lower the order of the last two steps (diffusers' rule)


def multistep_order(k: int, steps: int, max_order: int) -> int:
    """The order of step k of a multistep solver on a grid of ``steps`` steps ending in sigma = 0.

    Warm start min(k + 1, max_order); the last step, to sigma = 0, is first order; on grids of fewer
    than 15 steps the step before it is at most second order (diffusers' DPMSolverMultistepScheduler
    with lower_order_final and final_sigmas_type="zero").
    """
    if k == steps - 1:
        return 1
    order = min(k + 1, max_order)
    return min(order, 2) if k == steps - 2 and steps < LOWER_ORDER_BELOW else order


@dataclass(frozen=True)
class IPNDM(OneEvalPerStep):
    """iPNDM: Adams-Bashforth on eps = dx/dsigma with a lower-order warm start (up to 4th order).

    x_{k+1} = x_k + (sigma_{k+1} - sigma_k) sum_j c_j eps_{k-j}, with c = 1, (3,-1)/2, (23,-16,5)/12,
    (55,-59,37,-9)/24 (Zhang & Chen, 2023, DEIS paper, Alg. 2). eps_k is the corrected output; older
    eps come from the raw history. The fixed weights assume equal steps in sigma: fourth order on a
    uniform sigma grid, second order on Karras or log-uniform grids.
    """

    name: str = "ipndm"
    order: int = 4
    infinite_start = True

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        coeffs = IPNDM_COEFFS[min(state.k, 3)]
        eps = [(ev.x - denoised) / ev.sigma] + [h.eps for h in reversed(state.history)]
        eps_bar = sum(c * e for c, e in zip(coeffs, eps))
        return push(state, ev, ev.x + (sigmas[state.k + 1] - ev.sigma) * eps_bar)


@dataclass(frozen=True)
class DPMSolverPP(OneEvalPerStep):
    """Multistep DPM-Solver++ (Lu et al., 2022b, Alg. 2 and the 3M of its reference code), data prediction.

    With t = -log sigma, h = t_{k+1} - t_k, r_j = h_{k-j}/h and D_j the outputs of evaluations k-j:
    x_{k+1} = (sigma_{k+1}/sigma_k) x_k - p D_0 + (p/h + 1) D' - ((p + h)/h^2 - 1/2) D'', p = expm1(-h);
    order 2: D' = 0, D_0 := (1 + 1/(2 r_0)) D_0 - D_1/(2 r_0);  order 3: D'_0 = (D_0 - D_1)/r_0,
    D'_1 = (D_1 - D_2)/r_1, D' = D'_0 + r_0/(r_0 + r_1) (D'_0 - D'_1), D'' = (D'_0 - D'_1)/(r_0 + r_1).
    Orders follow ``multistep_order``; the step to sigma = 0 is x = D_0. The 3M is the reference code's
    and diffusers' (kept for parity): its D'' is half the second divided difference that its weight
    assumes, so a step is exact only for D affine in t and 3M converges with order 2 (with a smaller
    error constant than 2M); tests/test_solvers.py shows both.
    """

    name: str
    order: int
    infinite_start = True

    @property
    def stock(self) -> tuple[Stock, ...]:  # type: ignore[override]
        return (Stock("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": self.order},
                      "timesteps"),)

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        k, steps = state.k, len(sigmas) - 1
        sigma, sigma_next = ev.sigma, sigmas[k + 1]
        order = multistep_order(k, steps, self.order)
        if sigma_next == 0:
            return push(state, ev, denoised)
        h = sigma.log() - sigma_next.log()
        x = (sigma_next / sigma) * ev.x
        if order == 1:
            return push(state, ev, x - torch.expm1(-h) * denoised)
        # Divided differences of the data predictions in t, from the raw history.
        prev = state.history[-1]
        r0 = (prev.sigma.log() - sigma.log()) / h
        if order == 2:
            d_eff = (1 + 1 / (2 * r0)) * denoised - prev.denoised / (2 * r0)
            return push(state, ev, x - torch.expm1(-h) * d_eff)
        prev2 = state.history[-2]
        r1 = (prev2.sigma.log() - prev.sigma.log()) / h
        d1_0, d1_1 = (denoised - prev.denoised) / r0, (prev.denoised - prev2.denoised) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi = torch.expm1(-h)
        return push(state, ev, x - phi * denoised + (phi / h + 1) * d1 - ((phi + h) / h**2 - 0.5) * d2)
