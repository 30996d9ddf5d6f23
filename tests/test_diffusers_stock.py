"""lambda = 0 is the user's scheduler: DODEScheduler.from_scheduler(stock) in DODEPipeline, same seed, gives what
the stock diffusers scheduler gives (tiny random UNet, float32 as pipelines run, 1e-5 relative), for Euler, Heun,
DPM-Solver++(2M/3M), UniPC and DDIM in their default and Stable Diffusion settings; what no ODE solver on a grid
ending in 0 reproduces is refused with one error naming the setting."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)

from dode.integrations.diffusers.pipeline import DODEPipeline
from dode.integrations.diffusers.scheduler import DODEScheduler

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}  # Stable Diffusion's schedule
SD_DDIM = {**SD, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}  # as SD 1.5's scheduler config
STOCK = {
    "euler": (EulerDiscreteScheduler, SD, "euler"),
    "euler-karras": (EulerDiscreteScheduler, {**SD, "use_karras_sigmas": True}, "euler"),
    "euler-leading": (EulerDiscreteScheduler, {**SD, "timestep_spacing": "leading", "steps_offset": 1}, "euler"),
    "heun": (HeunDiscreteScheduler, SD, "heun"),
    "dpmpp-2m": (DPMSolverMultistepScheduler, {}, "dpmpp_2m"),
    "dpmpp-2m-karras": (DPMSolverMultistepScheduler, {**SD, "use_karras_sigmas": True}, "dpmpp_2m"),
    "dpmpp-3m": (DPMSolverMultistepScheduler, {**SD, "solver_order": 3}, "dpmpp_3m"),
    "unipc": (UniPCMultistepScheduler, SD, "unipc_2"),
    "unipc-3": (UniPCMultistepScheduler, {**SD, "solver_order": 3}, "unipc"),
    "ddim-sd": (DDIMScheduler, SD_DDIM, "euler"),
    "ddim-trailing": (DDIMScheduler, {"clip_sample": False, "timestep_spacing": "trailing"}, "euler"),
}


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                       norm_num_groups=4).eval()


def latents(unet, scheduler, steps: int) -> torch.Tensor:
    pipe = DODEPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=steps,
                output_type="latent").images


@pytest.mark.parametrize("name", sorted(STOCK))
@pytest.mark.parametrize("steps", [5, 10])
def test_lambda_zero_reproduces_the_stock_scheduler(unet, name, steps):
    cls, config, solver = STOCK[name]
    stock = cls(**config)
    ref = latents(unet, stock, steps)
    sched = DODEScheduler.from_scheduler(stock)
    out = latents(unet, sched, steps)
    assert sched.config.solver == solver
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    planted = latents(unet, DODEScheduler.from_scheduler(stock, lambdas=[0.2] * len(sched.timesteps)), steps)
    assert (planted - ref).abs().max() > 1e-3 * ref.abs().max()  # the lambdas act on the same run


@pytest.mark.parametrize("name", sorted(STOCK))
def test_the_swap_idiom_from_config_is_from_scheduler(unet, name):
    """``pipe.scheduler = DODEScheduler.from_config(pipe.scheduler.config)``: the config names no class, yet the
    scheduler built is from_scheduler's (same solver, grid, timesteps), and so is the stock run at lambda = 0;
    from_config's lambdas= and config overrides go where from_scheduler's do."""
    cls, config, solver = STOCK[name]
    stock = cls(**config)
    ref = latents(unet, stock, 5)
    swapped = DODEScheduler.from_config(stock.config)
    assert type(swapped) is DODEScheduler and swapped.config.solver == solver
    assert (latents(unet, swapped, 5) - ref).abs().max() <= 1e-5 * ref.abs().max()
    planted = [0.2] * len(stock_timesteps(stock, 5))
    with_lambdas = latents(unet, DODEScheduler.from_config(stock.config, lambdas=planted), 5)
    assert torch.equal(with_lambdas, latents(unet, DODEScheduler.from_scheduler(stock, lambdas=planted), 5))
    moved = DODEScheduler.from_config(stock.config, beta_end=0.02)
    assert torch.equal(moved.alphas_cumprod, cls(**{**config, "beta_end": 0.02}).alphas_cumprod)


def test_the_stock_grid_round_trips_and_fixes_its_steps_with_lambdas(unet, tmp_path):
    stock = DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True)
    sched = DODEScheduler.from_scheduler(stock, lambdas=[0.0, 0.1, -0.1, 0.2, 0.0])
    sched.save_pretrained(tmp_path)
    loaded = DODEScheduler.from_pretrained(tmp_path)
    assert torch.equal(loaded.sigmas, sched.sigmas) and torch.equal(loaded.timesteps, sched.timesteps)
    assert sched.num_inference_steps == 5 and sched.timesteps.tolist() == stock_timesteps(stock, 5)
    assert torch.equal(latents(unet, sched, 5), latents(unet, loaded, 5))
    with pytest.raises(ValueError, match="call the pipeline with num_inference_steps=5"):
        latents(unet, loaded, 6)


def stock_timesteps(stock, steps):
    stock.set_timesteps(steps)
    return [float(t) for t in stock.timesteps]


@pytest.mark.parametrize(("scheduler", "message"), [
    (DDIMScheduler(), "clip_sample=False"),
    (DPMSolverMultistepScheduler(final_sigmas_type="sigma_min"), "final_sigmas_type='zero'"),
    (DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), "algorithm_type='dpmsolver\\+\\+'"),
    (UniPCMultistepScheduler(solver_type="bh1"), "solver_type='bh2'"),
    (DDIMScheduler(clip_sample=False, timestep_spacing="linspace"), "timestep_spacing='leading'"),
])
def test_what_cannot_be_reproduced_is_refused_with_the_setting_to_change(scheduler, message):
    with pytest.raises(ValueError, match=message):
        DODEScheduler.from_scheduler(scheduler).set_timesteps(10)


def test_initial_noise_is_the_one_switch_for_a_scheduler_built_by_name(unet):
    """On DPM-Solver++'s own (integer-timestep) grid, a dpmpp_2m DODEScheduler named explicitly is the stock
    scheduler once it starts from unit noise in VP space, and differs by its sigma_0 n start otherwise."""
    stock = DPMSolverMultistepScheduler()
    stock.set_timesteps(6)
    grid = {"solver": "dpmpp_2m", "sigmas": stock.sigmas.double().tolist()}
    ref = latents(unet, stock, 6)
    vp = latents(unet, DODEScheduler.from_config(stock.config, **grid, initial_noise="vp"), 6)
    sigma = latents(unet, DODEScheduler.from_config(stock.config, **grid), 6)
    assert (vp - ref).abs().max() <= 1e-5 * ref.abs().max() < (sigma - ref).abs().max()
    with pytest.raises(ValueError, match="unknown initial_noise 've'; choose one of"):
        DODEScheduler.from_config(stock.config, **grid, initial_noise="ve")
