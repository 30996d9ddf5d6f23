"""UniPC, the unified predictor-corrector (Zhao et al., NeurIPS 2023), data prediction, B(h) = e^h - 1."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dode.core.solvers.base import OneEvalPerStep, Stock, push
from dode.core.types import Evaluation, SolverState, Tensor

Points = list[tuple[Tensor, Tensor]]  # (sigma_m, D_m) of earlier (or, for UniC, the new) evaluations


def uni_bh2(x: Tensor, sigma_s: Tensor, sigma_t: Tensor, d_s: Tensor, points: Points) -> Tensor:
    """One UniP/UniC update from (x, sigma_s, D_s) to sigma_t (Zhao et al., 2023, Sec. 3), t = -log sigma.

    x_t = (sigma_t/sigma_s) x - psi_1 D_s - B(h) sum_m a_m (D_m - D_s)/r_m over the n ``points``,
    r_m = log(sigma_s/sigma_m)/h, B(h) = psi_1 = expm1(-h) (bh2), psi_{k+1} = psi_k/(-h) - 1/k!.
    a solves R a = g, R_im = r_m^(i-1), g_i = i! psi_{i+1}/B(h), i = 1..n; for n = 1, a = 1/2 (the
    reference code's choice, kept by diffusers). Written for x = x_VP/alpha. UniP passes earlier
    evaluations; UniC also the new one at sigma_t (r = 1).
    """
    h = sigma_s.log() - sigma_t.log()
    b_h = torch.expm1(-h)
    x_t = (sigma_t / sigma_s) * x - b_h * d_s
    if not points:
        return x_t
    rks = torch.stack([(sigma_s.log() - sigma_m.log()) / h for sigma_m, _ in points])
    g, phi = [], b_h / -h - 1
    for i in range(len(points)):
        g.append(phi * math.factorial(i + 1) / b_h)
        phi = phi / -h - 1 / math.factorial(i + 2)
    if len(points) == 1:
        rhos = rks.new_full((1,), 0.5)
    else:
        powers = torch.arange(len(points), dtype=rks.dtype, device=rks.device)
        rhos = torch.linalg.solve(rks[None, :] ** powers[:, None], torch.stack(g))
    return x_t - b_h * sum(a * (d_m - d_s) / r for a, r, (_, d_m) in zip(rhos, rks, points))

UNIPC_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0, "solver_type": "bh2",
              "use_dynamic_shifting": False, "shift_terminal": None, "final_sigmas_type": "zero"}  # given times as is

@dataclass(frozen=True)
class UniPC(OneEvalPerStep):
    """UniPC-``order`` with bh2 (Zhao et al., 2023), as diffusers' UniPCMultistepScheduler (predict_x0).

    Evaluation k is made at the predictor state x_k. UniC first corrects the previous corrected state
    x^c_{k-1} to x^c_k with the new output D_k (same order as the predictor that produced x_k, so one
    order higher), then UniP steps from x^c_k to x_{k+1}. Order min(order, k + 1, steps - k): warm
    start, and lower orders at the end (lower_order_final; the last step, to sigma = 0, gives D_k).
    ``carry`` holds x^c_k. Only D_k is corrected by D-ODE (in both UniC and UniP); history stays raw.
    """

    name: str = "unipc"
    order: int = 3
    infinite_start = True

    @property
    def stock(self) -> tuple[Stock, ...]:  # type: ignore[override]
        return (Stock("UniPCMultistepScheduler", {"solver_type": "bh2", "solver_order": self.order}),
                Stock("UniPCMultistepScheduler", {**UNIPC_FLOW, "solver_order": self.order}, "sigmas", flow=True))

    def step_order(self, k: int, steps: int) -> int:
        return min(self.order, k + 1, steps - k)

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        k, steps = state.k, len(sigmas) - 1
        past = list(reversed(state.history))
        x = ev.x
        if k > 0:
            # UniC: correct x_k using D_k and the evaluations that made the predictor step into it.
            prev, p = past[0], self.step_order(k - 1, steps)
            points = [(e.sigma, e.denoised) for e in past[1:p]] + [(ev.sigma, denoised)]
            x = uni_bh2(state.carry[0], prev.sigma, ev.sigma, prev.denoised, points)
        # UniP: predict x_{k+1} from the corrected x_k.
        p = self.step_order(k, steps)
        points = [(e.sigma, e.denoised) for e in past[: p - 1]]
        return push(state, ev, uni_bh2(x, ev.sigma, sigmas[k + 1], denoised, points), carry=(x,))
