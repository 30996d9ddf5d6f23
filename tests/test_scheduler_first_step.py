"""DODEScheduler with an analytic first step in a tiny Stable Diffusion pipeline: exactly NFE UNet calls, the
first at the first evaluated sigma, and the samples of dode.sample with the same lambdas and first step."""

import pytest
import torch

import dode
from dode.core.gaussian import FirstStep, Gaussian
from dode.core.grids import GridSpec
from dode.integrations.diffusers.distill import pipeline_denoiser
from dode.integrations.diffusers.scheduler import DODEScheduler
from tests.test_diffusers_scheduler import GUIDANCE, PROMPTS, noise, planted, sd_latents, tiny_sd64

sd64 = pytest.fixture(scope="module")(tiny_sd64)


@pytest.fixture(scope="module")
def latent_gaussian():
    """A Gaussian over the tiny pipeline's (4, 8, 8) latents, low rank plus an isotropic rest."""
    x = torch.randn(300, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return Gaussian.fit(0.5 * x + 0.3 * x.roll(1, dims=1), rank=16)


def count_unet(pipe):
    """Record the timestep of every UNet call."""
    seen, forward = [], pipe.unet.forward

    def counted(sample, timestep, *args, **kwargs):
        seen.append(float(timestep))
        return forward(sample, timestep, *args, **kwargs)

    pipe.unet.forward = counted
    return seen, forward


@pytest.mark.parametrize(("solver", "calls", "kind"), [("dpmpp_2m", 3, "analytic"), ("euler", 2, "analytic"),
                                                       ("dpmpp_2m", 3, "flowmap"), ("heun", 3, "flowmap")])
def test_pipeline_makes_exactly_nfe_unet_calls_and_equals_dode_sample(sd64, latent_gaussian, solver, calls, kind):
    pipe, stock = sd64
    first = FirstStep(kind, latent_gaussian)
    spec = GridSpec.for_calls("karras", solver, calls, kind)
    sched0 = DODEScheduler.from_scheduler(stock, solver=solver, grid=spec.family, nfe=dode.get_solver(solver).nfe(spec.steps))
    sigmas = sched0.sigmas
    evaluations = dode.get_solver(solver).nfe(spec.steps - (kind == "flowmap"))
    lam = dode.Lambdas(planted(evaluations), solver, sigmas.tolist(), first_step=first.to_dict())
    sched = DODEScheduler.from_scheduler(stock, lambdas=lam)
    assert sched.nfe == calls and len(sched.timesteps) == calls
    x_T = noise((2, 4, 8, 8), seed=4)
    seen, forward = count_unet(pipe)
    try:
        out = sd_latents(pipe, sched, x_T)
    finally:
        pipe.unet.forward = forward
    assert len(seen) == calls  # one UNet call (a CFG batch) per network call
    first_sigma = sigmas[1]  # analytic: evaluation 1; flowmap: the solver starts there
    assert seen[0] == pytest.approx(float(sched.schedule.sigma_to_t(first_sigma.reshape(1))), abs=1e-3)
    ref = dode.sample(pipeline_denoiser(pipe, PROMPTS, guidance_scale=GUIDANCE), x_T, sigmas, solver, lam)
    assert (out - ref).abs().max() <= 1e-10 * ref.abs().max()


def test_first_step_round_trips_and_refuses_img2img(sd64, latent_gaussian, tmp_path):
    stock = sd64[1]
    sigmas = DODEScheduler.from_scheduler(stock, solver="euler", nfe=4).sigmas
    lam = dode.Lambdas([0.1] * 4, "euler", sigmas.tolist(), first_step=FirstStep("analytic", latent_gaussian).to_dict())
    sched = DODEScheduler.from_scheduler(stock, lambdas=lam)
    sched.save_pretrained(tmp_path)
    back = DODEScheduler.from_pretrained(tmp_path)
    assert back.first.gaussian.fingerprint == latent_gaussian.fingerprint and back.nfe == 3
    with pytest.raises(ValueError, match="analytic first step"):
        back.set_begin_index(1)
