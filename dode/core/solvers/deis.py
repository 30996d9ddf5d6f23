"""DEIS, the diffusion exponential integrator sampler, tAB variant (Zhang & Chen, ICLR 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dode.core.solvers.base import OneEvalPerStep, push
from dode.core.solvers.multistep import multistep_order
from dode.core.types import Evaluation, SolverState, Tensor


def deis_coefficients(nodes: Tensor, sigma_next: Tensor) -> Tensor:
    """C_j = int_{sigma_k}^{sigma_next} L_j(log sigma) dsigma for the Lagrange basis L_j on log(nodes).

    nodes = (sigma_k, sigma_{k-1}, ...). With s = log sigma - log sigma_k, delta = log(sigma_next/sigma_k)
    and phi_m = int_0^delta s^m e^s ds (phi_0 = e^delta - 1, phi_m = delta^m e^delta - m phi_{m-1}), the
    basis coefficients solve V^T a = phi with V_im = s_i^m, and C = sigma_k a.
    """
    s = nodes.log() - nodes[0].log()
    delta = sigma_next.log() - nodes[0].log()
    phi = [torch.expm1(delta)]
    for m in range(1, len(nodes)):
        phi.append(delta**m * delta.exp() - m * phi[-1])
    vandermonde = s[:, None] ** torch.arange(len(nodes), dtype=s.dtype, device=s.device)
    return nodes[0] * torch.linalg.solve(vandermonde.T, torch.stack(phi))


@dataclass(frozen=True)
class DEIS(OneEvalPerStep):
    """DEIS-tAB (Zhang & Chen, 2023, Sec. 4): Adams-Bashforth with exactly integrated weights.

    In sigma space (rho = sigma, x = x_VP / alpha) the ODE is dx/dsigma = eps, and the last r outputs are
    extrapolated by their Lagrange polynomial and integrated exactly:
    x_{k+1} = x_k + sum_j C_kj eps_{k-j},  C_kj = int_{sigma_k}^{sigma_{k+1}} L_j(tau) dsigma.
    The interpolation variable is tau = log sigma, as diffusers' DEISMultistepScheduler ("logrho");
    the paper's tAB uses the model's time t, which sigma space does not have. Order up to 3 with a
    lower-order warm start and ending (``multistep_order``); the step to sigma = 0 is x = D.
    """

    name: str = "deis"
    order: int = 3
    infinite_start = True

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        order = multistep_order(state.k, len(sigmas) - 1, self.order)
        older = list(reversed(state.history))[: order - 1]
        eps = [(ev.x - denoised) / ev.sigma] + [h.eps for h in older]
        coeffs = deis_coefficients(torch.stack([ev.sigma] + [h.sigma for h in older]), sigmas[state.k + 1])
        return push(state, ev, ev.x + sum(c * e for c, e in zip(coeffs, eps)))

