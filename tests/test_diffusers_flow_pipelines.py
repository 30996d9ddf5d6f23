"""lambda = 0 is the stock scheduler through the real pipeline call, text stacks included (SD, SDXL, SD3, FLUX;
tiny random weights, float32, 1e-5 relative), built by either idiom: ``DODEScheduler.from_scheduler(pipe.scheduler)``
or ``DODEScheduler.from_config(pipe.scheduler.config)``. For flow matching the DODEScheduler takes the stock
scheduler's own float32 times and network timesteps (the gap the issue measured, 1e-4..1e-3, came from timesteps
one float32 step off); SD3 and FLUX take lambdas with ``solver`` and ``nfe`` through their normal call.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler
from test_diffusers_pipelines import tiny_sdxl_pipeline
from test_diffusers_scheduler import one_thread, tiny_sd_pipeline  # noqa: F401  (the shared fixture)
from tiny_flow_pipelines import tiny_flux_pipeline, tiny_sd3_pipeline

import dode
from dode.core.grids import GridSpec
from dode.integrations.diffusers.scheduler import DODEFlowScheduler, DODEScheduler
from dode.models.flow import FlowDenoiser, FlowSchedule, flux_call, pack_latents, unpack_latents

PROMPTS = ["a cat", "dog"]
BUILD = {"from_scheduler": lambda stock: DODEScheduler.from_scheduler(stock),
         "from_config": lambda stock: DODEScheduler.from_config(stock.config)}


pytestmark = pytest.mark.usefixtures("one_thread")


def run(pipe, scheduler, **kwargs):
    """The pipeline's final latents for PROMPTS with ``scheduler``, the network calls, and its timesteps."""
    calls = []
    net = getattr(pipe, "transformer", None) or pipe.unet
    hook = net.register_forward_pre_hook(lambda module, args: calls.append(1))
    pipe.scheduler = scheduler
    try:
        with torch.no_grad():
            out = pipe(PROMPTS, output_type="latent", generator=torch.Generator().manual_seed(3), **kwargs).images
    finally:
        hook.remove()
    return out, len(calls), scheduler.timesteps.clone()


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


PIPELINES = {  # name: (builder, stock scheduler from the pipeline's, call)
    "sd": (tiny_sd_pipeline, lambda p: DPMSolverMultistepScheduler.from_config(p.scheduler.config),
           {"num_inference_steps": 6, "guidance_scale": 3.0}),
    "sdxl": (tiny_sdxl_pipeline, lambda p: EulerDiscreteScheduler.from_config(p.scheduler.config),
             {"num_inference_steps": 6, "guidance_scale": 3.0, "height": 64, "width": 64}),
    "sd3": (tiny_sd3_pipeline, lambda p: p.scheduler,
            {"num_inference_steps": 8, "guidance_scale": 4.0, "height": 64, "width": 64, "max_sequence_length": 16}),
    "flux": (tiny_flux_pipeline, lambda p: p.scheduler,
             {"num_inference_steps": 8, "guidance_scale": 3.5, "height": 64, "width": 64, "max_sequence_length": 16}),
}


@pytest.fixture(scope="module")
def pipelines():
    return {name: build() for name, (build, _, _) in PIPELINES.items()}


@pytest.mark.parametrize("build", sorted(BUILD))
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_lambda_zero_is_the_stock_scheduler_in_the_pipeline_call(pipelines, name, build):
    pipe, (_, stock_of, kwargs) = pipelines[name], PIPELINES[name]
    stock = stock_of(pipe)
    ref, stock_calls, stock_timesteps = run(pipe, stock, **kwargs)
    ours = BUILD[build](stock)
    out, calls, timesteps = run(pipe, ours, **kwargs)
    assert isinstance(ours, DODEFlowScheduler) == (name in ("sd3", "flux"))
    assert calls == stock_calls and torch.equal(timesteps, stock_timesteps.to(timesteps.dtype))
    assert out.dtype == torch.float32 and relative(out, ref) <= 1e-5


def test_flux_and_sd3_take_lambdas_with_solver_and_nfe_through_their_normal_call(pipelines):
    """A plain list with solver= and nfe=, and a Lambdas artifact on a grid that is not FLUX's default: FluxPipeline
    passes sigmas=linspace(1, 1/N, N) on every call, which the fixed grid reads as N only. FLUX's result is
    dode.sample on the transformer's adapter, same noise, same grid."""
    for name in ("sd3", "flux"):
        pipe, kwargs = pipelines[name], {**PIPELINES[name][2], "num_inference_steps": 4}
        sched = DODEScheduler.from_scheduler(pipe.scheduler, solver="dpmpp_2m", nfe=4, lambdas=[0.0, 0.2, -0.1, 0.1])
        out, calls, _ = run(pipe, sched, **kwargs)
        base, _, _ = run(pipe, DODEScheduler.from_scheduler(pipe.scheduler, solver="dpmpp_2m", nfe=4), **kwargs)
        assert calls == 4 and relative(out, base) > 1e-3  # the lambdas act
    pipe = pipelines["flux"]
    schedule = FlowSchedule.from_config(pipe.scheduler.config)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    grid = GridSpec("karras", 4).sigmas(FlowDenoiser(None, schedule, mu=schedule.mu(16)))
    grid[0] = 1e8  # from t = 1, where FLUX's noise is
    lam = dode.Lambdas((0.0, 0.2, -0.1, 0.1), "dpmpp_2m", tuple(grid.tolist()))
    pipe.scheduler = DODEScheduler.from_scheduler(pipe.scheduler, lambdas=lam)
    with torch.no_grad():
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS[0], None, max_sequence_length=16)
        out = pipe(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, latents=pack_latents(noise),
                   num_inference_steps=4, guidance_scale=3.5, height=16, width=16, output_type="latent").images
        den = FlowDenoiser(flux_call(pipe.transformer), schedule, model_kwargs={
            "encoder_hidden_states": prompt_embeds, "pooled_projections": pooled, "txt_ids": text_ids,
            "guidance": None})
        ref = dode.sample(den, noise.double(), grid, "dpmpp_2m", lam)
    assert relative(unpack_latents(out, tuple(noise.shape)).double(), ref) < 1e-5
