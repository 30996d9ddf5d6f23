"""Singlestep DPM-Solver-2 and -3 with noise prediction (Lu et al., NeurIPS 2022), on grid points."""

from __future__ import annotations

from dataclasses import dataclass

from dode.core.solvers.base import OneEvalPerStep, push
from dode.core.types import Evaluation, SolverState, Tensor


@dataclass(frozen=True)
class DPMSolverSinglestep(OneEvalPerStep):
    """DPM-Solver-``order`` (Lu et al., 2022, Alg. 1 and 2) in sigma space, t = -log sigma.

    Consecutive grid steps form one solver step of ``order`` stages: the intermediate points are grid
    points and each stage's output is the state at its grid point (diffusers'
    DPMSolverSinglestepScheduler, algorithm_type="dpmsolver", solver_type="midpoint"). Step k is stage
    k mod order of its group, except the last step, to sigma = 0, which is a lone first-order step
    (a group it cuts short ends early, diffusers' lower_order_final). From the group start
    (x_s, sigma_s, eps_s) to sigma_t, with h = log(sigma_s/sigma_t), r = log(sigma_s/sigma_u)/h for the
    current evaluation's level sigma_u, and sigma_t (e^h - 1) = sigma_s - sigma_t:
      stage 0 (DPM-Solver-1 = DDIM): x_t = x_s + (sigma_t - sigma_s) eps_s
      stage 1 (DPM-Solver-2):        x_t = x_s + (sigma_t - sigma_s) (eps_s + (eps_u - eps_s) / (2 r))
      stage 2 (DPM-Solver-3):        x_t = x_s + (sigma_t - sigma_s) eps_s - c (eps_u - eps_s) / r,
                                     c = (sigma_s - sigma_t)/h - sigma_t
    Unlike the paper, a 3-stage group's middle stage is this DPM-Solver-2 (as in diffusers) where the
    paper's DPM-Solver-3 weighs (eps_u - eps_s) by ((e^{rh} - 1)/(rh) - 1); both are second order, so
    the step stays third order. Only the current eps_u is corrected by D-ODE; eps_s comes raw.
    """

    name: str
    order: int
    own_teacher: str | None = None  # set where its groups do not fit the teacher's factor-fold grid

    def full_state(self, index: int, steps: int) -> bool:
        return self.stage(index, steps) == 0

    def stage(self, k: int, steps: int) -> int:
        """Which stage of its group step k is (0 starts a group)."""
        return 0 if k == steps - 1 else k % self.order

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        stage = self.stage(state.k, len(sigmas) - 1)
        sigma_t = sigmas[state.k + 1]
        eps_u = (ev.x - denoised) / ev.sigma
        if stage == 0:
            return push(state, ev, ev.x + (sigma_t - ev.sigma) * eps_u)
        # The group starts at the evaluation `stage` steps back.
        start = state.history[-stage]
        h = start.sigma.log() - sigma_t.log()
        r = (start.sigma.log() - ev.sigma.log()) / h
        eps_s = start.eps
        x = start.x + (sigma_t - start.sigma) * eps_s
        if stage == 1:
            return push(state, ev, x + (sigma_t - start.sigma) * (eps_u - eps_s) / (2 * r))
        return push(state, ev, x - ((start.sigma - sigma_t) / h - sigma_t) * (eps_u - eps_s) / r)
