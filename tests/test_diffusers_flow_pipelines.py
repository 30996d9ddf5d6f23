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
from dode.integrations.diffusers.distill import distill_pipeline, flow_pipeline_denoiser
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


FIT_PROMPTS, HELD_OUT = ["a cat", "dog", "a red fox", "bird"], ["a fish", "tree"]
SIZE = {"height": 32, "width": 32}


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_prompt_distilled_lambdas_lower_the_error_to_the_teacher_on_held_out_prompts(pipelines, name):
    """distill_pipeline on SD3 (classifier-free guidance) and FLUX (guidance embedding): fitted on four prompts, the
    lambdas bring Euler with 4 calls closer to a 40-step teacher on two prompts never seen, and shipped into the
    pipeline they sample as dode.sample does on the held-out prompts' denoiser."""
    pipe, guidance = pipelines[name], 3.0
    lam = distill_pipeline(pipe, FIT_PROMPTS, solver="euler", nfe=4, guidance_scale=guidance, samples_per_prompt=2,
                           fit={"guard": False}, **SIZE)
    den, shape = flow_pipeline_denoiser(pipe, HELD_OUT, guidance_scale=guidance, negative_prompt=None, **SIZE)
    noise = torch.randn(len(HELD_OUT) * 2, *shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    grid = torch.tensor(lam.sigmas, dtype=torch.float64)
    with torch.no_grad():
        teacher = dode.sample(den, noise, dode.refine(grid, 10), "euler")
        base, fitted = (dode.sample(den, noise, grid, "euler", values) for values in (None, lam))
    error = {what: float(((x - teacher) ** 2).mean()) for what, x in (("base", base), ("fitted", fitted))}
    assert error["fitted"] < 0.85 * error["base"], error

    pipe.scheduler = DODEScheduler.from_scheduler(pipe.scheduler, lambdas=lam)
    latents = noise[:1].float()
    with torch.no_grad():
        out = pipe(HELD_OUT[0], latents=pack_latents(latents) if name == "flux" else latents, output_type="latent",
                   num_inference_steps=4, guidance_scale=guidance, **SIZE).images
    out = unpack_latents(out, tuple(latents.shape)) if name == "flux" else out
    assert relative(out.double(), fitted[:1]) < 1e-5


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_cli_distill_pipeline_on_sd3_and_flux_folders(pipelines, name, tmp_path, capsys, monkeypatch):
    """dode distill-pipeline loads a saved SD3 / FLUX folder, fits on the flow grid by default, and writes a
    scheduler that loads back into the pipeline and samples in its normal call."""
    import dode.cli
    from dode.cli import main

    monkeypatch.setattr(dode.cli, "COMMANDS", {"distill-pipeline": dode.cli.COMMANDS["distill-pipeline"]})
    folder, out, prompts = tmp_path / name, tmp_path / "scheduler", tmp_path / "prompts.txt"
    pipelines[name].save_pretrained(folder)
    prompts.write_text("a cat\ndog\n")
    args = ["distill-pipeline", str(folder), "--nfe", "3", "--prompts", str(prompts), "--guidance-scale", "2.0",
            "--height", "32", "--width", "32", "--teacher-factor", "2", "--samples-per-prompt", "2", "--no-register",
            "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    pipe = type(pipelines[name]).from_pretrained(folder)
    pipe.scheduler = DODEScheduler.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, DODEFlowScheduler) and float(pipe.scheduler.sigmas[0]) == 1e8  # from t = 1
    with torch.no_grad():
        latents = pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.0, output_type="latent", **SIZE).images
    assert torch.isfinite(latents).all()
