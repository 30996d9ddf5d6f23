"""Linear multistep solvers in sigma space: iPNDM (Zhang & Chen, 2023) and DPM-Solver++(2M) (Lu et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..types import Evaluation, SolverState, Tensor
from .base import OneEvalPerStep, push

IPNDM_COEFFS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@dataclass(frozen=True)
class IPNDM(OneEvalPerStep):
    """iPNDM: Adams-Bashforth on eps = dx/dsigma with a lower-order warm start (up to 4th order).

    x_{k+1} = x_k + (sigma_{k+1} - sigma_k) sum_j c_j eps_{k-j}, with c = 1, (3,-1)/2, (23,-16,5)/12,
    (55,-59,37,-9)/24 (Zhang & Chen, 2023, DEIS paper, Alg. 2). eps_k is the corrected output; older
    eps come from the raw history.
    """

    name: str = "ipndm"

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        coeffs = IPNDM_COEFFS[min(state.k, 3)]
        eps = [(ev.x - denoised) / ev.sigma] + [h.eps for h in reversed(state.history)]
        eps_bar = sum(c * e for c, e in zip(coeffs, eps))
        return push(state, ev, ev.x + (sigmas[state.k + 1] - ev.sigma) * eps_bar)


@dataclass(frozen=True)
class DPMPP2M(OneEvalPerStep):
    """DPM-Solver++(2M) (Lu et al., 2022, Alg. 2), data prediction, t = -log sigma, h = t_{k+1} - t_k.

    x_{k+1} = (sigma_{k+1}/sigma_k) x_k - expm1(-h) D_eff, D_eff = (1 + 1/(2r)) D_k - 1/(2r) D_{k-1},
    r = h_{k-1}/h. First order on the first step and on the last step to sigma = 0 (x = D_k).
    """

    name: str = "dpmpp_2m"

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        sigma, sigma_next = ev.sigma, sigmas[state.k + 1]
        if sigma_next == 0:
            return push(state, ev, denoised)
        h = sigma.log() - sigma_next.log()
        d_eff = denoised
        if state.history:
            prev = state.history[-1]
            r = (prev.sigma.log() - sigma.log()) / h
            d_eff = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * prev.denoised
        return push(state, ev, (sigma_next / sigma) * ev.x - torch.expm1(-h) * d_eff)
