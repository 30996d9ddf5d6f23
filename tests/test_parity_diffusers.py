"""Parity of every solver with the matching diffusers 0.42 scheduler, in float64.

One deterministic model on both sides: the closed-form posterior mean of a Gaussian mixture
(dode.models.MixtureDenoiser). diffusers sees it as an eps-model in VP space (x_VP = x / sqrt(1 +
sigma^2)); dode samples in sigma space on the scheduler's own noise levels, sigma = sqrt((1 - abar) / abar),
from the same starting state (x_VE = x_VP sqrt(1 + sigma_0^2), so dode's unit noise is x_VE / sigma_0).
The schedulers' tables are cast to float64 after set_timesteps, so the comparison is float64 on both
sides except where a scheduler casts internally (DPMSolverMultistepScheduler steps in float32).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    HeunDiscreteScheduler,
    IPNDMScheduler,
    UniPCMultistepScheduler,
)

import dode
from dode.models import MixtureDenoiser

TOL = 1e-11  # float64 on both sides
TOL_FLOAT32_STEP = 1e-5  # DPMSolverMultistepScheduler.step casts the sample to float32
FLOAT64_TABLES = ("sigmas", "alphas_cumprod", "final_alpha_cumprod", "alpha_t", "sigma_t", "lambda_t")


@pytest.fixture(scope="module")
def mixture() -> MixtureDenoiser:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    return MixtureDenoiser(torch.tensor([0.5, 0.3, 0.2]), means, torch.tensor(0.3))


def start(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def in_float64(scheduler):
    """The scheduler with its noise tables in float64 (same values, float64 arithmetic)."""
    for name in FLOAT64_TABLES:
        value = getattr(scheduler, name, None)
        if isinstance(value, torch.Tensor):
            setattr(scheduler, name, value.to(torch.float64))
    return scheduler


def run_diffusers(scheduler, mixture, x, sigma_of, *, output="epsilon"):
    """The standard diffusers loop with the mixture as eps- (or v-) model; sigma_of(t) is its noise level."""
    for t in scheduler.timesteps:
        sigma = torch.as_tensor(sigma_of(float(t)), dtype=torch.float64)
        x_vp = scheduler.scale_model_input(x, t)
        x_ve = x_vp * (1 + sigma**2).sqrt()
        eps = (x_ve - mixture(x_ve, sigma.expand(len(x)))) / sigma
        if output == "v":  # x_VP = alpha x0 + beta eps, v = alpha eps - beta x0 = (eps - beta x_VP) / alpha
            alpha, beta = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()
            eps = (eps - beta * x_vp) / alpha
        x = scheduler.step(eps, t, x).prev_sample
    return x


def run_dode(mixture, x_ve, sigmas, solver):
    """dode.sample from the state x_ve at sigmas[0]; returns the final x0 and the states by grid index."""
    states = {}
    noise = x_ve / sigmas[0]
    final = dode.sample(mixture, noise, sigmas, solver, on_state=lambda i, x, _: states.setdefault(i, x))
    return final, states


def vp_scheduler(cls, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # algorithm_type="dpmsolver" is deprecated upstream
        return cls(num_train_timesteps=1000, beta_schedule="linear", **config)


def by_timestep(scheduler) -> dict[float, float]:
    return {float(t): float(s) for t, s in zip(scheduler.timesteps, scheduler.sigmas)}


def test_euler_matches_ddim(mixture):
    s = vp_scheduler(DDIMScheduler, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    s.set_timesteps(10)  # a divisor of 1000: DDIM's prev_timestep = t - 1000 // N lands on the next timestep
    in_float64(s)
    abar = s.alphas_cumprod
    sigmas = torch.cat([((1 - abar[s.timesteps]) / abar[s.timesteps]).sqrt(), torch.zeros(1).double()])
    x_vp = start()
    ours, _ = run_dode(mixture, x_vp * (1 + sigmas[0] ** 2).sqrt(), sigmas, "euler")
    theirs = run_diffusers(s, mixture, x_vp, dict(zip(s.timesteps.tolist(), sigmas.tolist())).get)
    assert (ours - theirs).abs().max() <= TOL


def test_heun_matches_heun_discrete(mixture):
    s = vp_scheduler(HeunDiscreteScheduler, timestep_spacing="trailing")
    s.set_timesteps(10)
    in_float64(s)
    assert len(s.timesteps) == dode.get_solver("heun").nfe(10) == 19
    sigmas = torch.cat([s.sigmas[:1], s.sigmas[1:-1:2], s.sigmas[-1:]])  # diffusers repeats inner sigmas
    x_ve = start() * s.init_noise_sigma
    ours, _ = run_dode(mixture, x_ve, sigmas, "heun")
    theirs = run_diffusers(s, mixture, x_ve.clone(), by_timestep(s).get)
    assert (ours - theirs).abs().max() <= TOL


@pytest.mark.parametrize(("solver", "order"), [("dpmpp_2m", 2), ("dpmpp_3m", 3)])
@pytest.mark.parametrize("steps", [10, 20])
def test_dpmpp_matches_dpm_solver_multistep(mixture, solver, order, steps):
    s = vp_scheduler(DPMSolverMultistepScheduler, solver_order=order, algorithm_type="dpmsolver++",
                     timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True)
    s.set_timesteps(steps)
    in_float64(s)
    x_vp = start()
    ours, _ = run_dode(mixture, x_vp * (1 + s.sigmas[0] ** 2).sqrt(), s.sigmas, solver)
    theirs = run_diffusers(s, mixture, x_vp, by_timestep(s).get)
    assert (ours - theirs).abs().max() <= TOL_FLOAT32_STEP


@pytest.mark.parametrize(("solver", "order", "steps"), [
    ("dpm_solver_2", 2, 10), ("dpm_solver_2", 2, 9), ("dpm_solver_3", 3, 9), ("dpm_solver_3", 3, 10),
    ("dpm_solver_3", 3, 11)])
def test_dpm_solver_matches_dpm_solver_singlestep(mixture, solver, order, steps):
    # algorithm_type="dpmsolver" (noise prediction) needs final_sigmas_type="sigma_min": diffusers stops at
    # sigma_min; dode's grid continues with a first-order step to 0, so compare the states at sigma_min.
    s = vp_scheduler(DPMSolverSinglestepScheduler, solver_order=order, algorithm_type="dpmsolver",
                     solver_type="midpoint", final_sigmas_type="sigma_min", lower_order_final=False)
    s.set_timesteps(steps)
    in_float64(s)
    sigmas = torch.cat([s.sigmas, torch.zeros(1, dtype=torch.float64)])
    x_vp = start()
    ours = run_dode(mixture, x_vp * (1 + sigmas[0] ** 2).sqrt(), sigmas, solver)[1][steps]
    theirs = run_diffusers(s, mixture, x_vp, by_timestep(s).get) * (1 + s.sigmas[-1] ** 2).sqrt()
    assert (ours - theirs).abs().max() <= TOL


def test_deis_matches_deis_multistep(mixture):
    # DEISMultistepScheduler ends at sigma_min; 20 >= 15 steps keep its order 3 to the end, as dode's
    # DEIS on the same levels followed by a first-order step to 0. Compare at sigma_min.
    steps = 20
    s = vp_scheduler(DEISMultistepScheduler, solver_order=3, algorithm_type="deis",
                     timestep_spacing="trailing")
    s.set_timesteps(steps)
    in_float64(s)
    sigmas = torch.cat([s.sigmas, torch.zeros(1, dtype=torch.float64)])
    x_vp = start()
    ours = run_dode(mixture, x_vp * (1 + sigmas[0] ** 2).sqrt(), sigmas, "deis")[1][steps]
    theirs = run_diffusers(s, mixture, x_vp, by_timestep(s).get) * (1 + s.sigmas[-1] ** 2).sqrt()
    assert (ours - theirs).abs().max() <= TOL


@pytest.mark.parametrize("steps", [6, 10])
def test_unipc_matches_unipc_multistep(mixture, steps):
    s = vp_scheduler(UniPCMultistepScheduler, solver_order=3, solver_type="bh2", predict_x0=True,
                     timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True)
    s.set_timesteps(steps)
    in_float64(s)
    x_vp = start()
    ours, _ = run_dode(mixture, x_vp * (1 + s.sigmas[0] ** 2).sqrt(), s.sigmas, "unipc")
    theirs = run_diffusers(s, mixture, x_vp, by_timestep(s).get)
    assert (ours - theirs).abs().max() <= TOL


def test_ipndm_matches_ipndm_scheduler(mixture):
    # IPNDMScheduler's own schedule beta = sin^2(pi/2 s), alpha = sqrt(1 - beta^2) starts at alpha = 0
    # (sigma = inf); start it at s = 0.95 through trained_betas instead. sigma_VE = beta / alpha; its model
    # output is v (ets = beta x + alpha v = eps).
    steps = 12
    betas = torch.sin(torch.linspace(0.95, 0.0, steps + 1, dtype=torch.float64) * math.pi / 2) ** 2
    s = IPNDMScheduler(trained_betas=betas.tolist())
    s.set_timesteps(steps)
    s.betas, s.alphas = betas, (1 - betas**2).sqrt()
    sigmas = s.betas / s.alphas
    x_vp = start()
    ours, _ = run_dode(mixture, x_vp * (1 + sigmas[0] ** 2).sqrt(), sigmas, "ipndm")
    level = {float(t): float(sig) for t, sig in zip(s.timesteps, sigmas)}
    theirs = run_diffusers(s, mixture, x_vp, level.get, output="v")
    assert (ours - theirs).abs().max() <= TOL


@pytest.mark.parametrize("order", [2, 3])
def test_singlestep_stages_follow_diffusers_order_list(order):
    # diffusers' get_order_list for a grid ending in 0 (final_sigmas_type="zero" forces lower_order_final).
    solver = dode.get_solver(f"dpm_solver_{order}")
    s = vp_scheduler(DPMSolverSinglestepScheduler, solver_order=order, algorithm_type="dpmsolver++",
                     final_sigmas_type="zero", lower_order_final=True)
    for steps in range(1, 25):
        assert [solver.stage(k, steps) + 1 for k in range(steps)] == s.get_order_list(steps)
