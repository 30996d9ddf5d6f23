"""DODEScheduler in stock pipelines beyond txt2img: img2img, inpainting, SDXL, explicit grids, DDIMPipeline.

Every pipeline is built offline from tiny random components; the D-ODE result is compared with
``dode.sample`` on the same guided denoiser, noise and grid (the img2img reference starts from
x_s = x0 + sigma_s n on the rest of the grid, sigmas[s:]).
"""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from test_diffusers_scheduler import (
    GUIDANCE,
    PROMPTS,
    noise,
    one_thread,  # noqa: F401  (the shared fixture, used below)
    planted,
    sd_latents,
    tiny_clip_config,
    tiny_sd64,
    tiny_tokenizer,
    tiny_unet2d,
    tiny_vae,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

import dode
from dode.core.grids import GridSpec
from dode.integrations.diffusers.distill import distill_pipeline, pipeline_denoiser
from dode.integrations.diffusers.pipeline import DODEPipeline
from dode.integrations.diffusers.scheduler import DODEScheduler
from dode.models import VPDenoiser


def tiny_sdxl_pipeline() -> StableDiffusionXLPipeline:
    """SDXL's layout at toy size: two CLIP encoders (hidden 32 + 32 = cross-attention 64), pooled
    projection 32, "text_time" added conditioning (6 time ids x 8 + 32 = 80)."""
    torch.manual_seed(0)
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=32,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(tiny_clip_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(tiny_clip_config(tokenizer_2)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


pytestmark = pytest.mark.usefixtures("one_thread")
sd64 = pytest.fixture(scope="module")(tiny_sd64)


@pytest.fixture(scope="module")
def sdxl64():
    pipe = tiny_sdxl_pipeline().to(torch.float64)
    return pipe, pipe.scheduler


def mid_grid_reference(pipe, sched, x0, n, strength, values, solver="euler", correction="data"):
    """dode.sample from x_s = x0 + sigma_s n on sigmas[s:] with the remaining lambdas (diffusers' t_start)."""
    steps = sched.num_inference_steps
    t_start = steps - int(steps * strength)
    sigmas = sched.sigmas[t_start:]
    lam = dode.Lambdas(values[t_start * sched.order :], solver, sigmas.tolist(), correction)
    den = pipeline_denoiser(pipe, PROMPTS, guidance_scale=GUIDANCE)
    return dode.sample(den, (x0 + sigmas[0] * n) / sigmas[0], sigmas, solver, lam), t_start * sched.order


def variant(cls, pipe, sched, **kwargs):
    """Another stock pipeline class on the same components, with ``sched`` as its scheduler."""
    pipe.scheduler = sched
    other = cls(**pipe.components, **kwargs)
    other.set_progress_bar_config(disable=True)
    return other


def close(out, ref, rel):
    return (out - ref).abs().max() <= rel * ref.abs().max()


@pytest.mark.parametrize(
    "solver,nfe,correction", [("euler", 5, "data"), ("heun", 7, "data"), ("dpmpp_2m", 5, "noise")]
)
def test_img2img_starts_mid_grid_and_equals_dode_sample(sd64, solver, nfe, correction):
    """strength < 1: set_begin_index(t_start * order), add_noise, then the rest of the grid."""
    pipe, stock = sd64
    values = planted(nfe)
    sched = DODEScheduler.from_scheduler(stock, solver=solver, nfe=nfe, lambdas=values, correction=correction)
    img2img = variant(StableDiffusionImg2ImgPipeline, pipe, sched, requires_safety_checker=False)
    x0, seed = noise((2, 4, 8, 8), seed=7) * 0.5, 11  # 4-channel images are taken as latents
    out = img2img(
        PROMPTS,
        image=x0,
        strength=0.6,
        num_inference_steps=sched.num_inference_steps,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).images
    ref, begin = mid_grid_reference(
        pipe, sched, x0, noise((2, 4, 8, 8), seed=seed), 0.6, values, solver, correction
    )
    assert sched.begin_index == begin > 0 and sched.step_index == nfe
    assert close(out, ref, 1e-10)


def test_inpainting_with_a_full_mask_is_img2img(sd64):
    """The 4-channel inpainting loop re-noises the kept region with add_noise at the next timestep each
    step; with the whole image masked that blend is the identity and the run is img2img's."""
    pipe, stock = sd64
    sched = DODEScheduler.from_scheduler(stock, solver="euler", nfe=4, lambdas=planted(4))
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    common = {"strength": 0.75, "num_inference_steps": 4, "guidance_scale": GUIDANCE, "output_type": "latent"}
    inpaint = variant(StableDiffusionInpaintPipeline, pipe, sched, requires_safety_checker=False)
    calls = []
    add_noise = sched.add_noise
    sched.add_noise = lambda x0, n, t: (
        calls.append(float(torch.as_tensor(t).reshape(-1)[0])) or add_noise(x0, n, t)
    )
    mask = torch.ones(2, 1, 16, 16, dtype=torch.float64)
    painted = inpaint(
        PROMPTS, image=image, mask_image=mask, generator=torch.Generator().manual_seed(5), **common
    ).images
    del sched.add_noise
    img2img = variant(StableDiffusionImg2ImgPipeline, pipe, sched, requires_safety_checker=False)
    plain = img2img(PROMPTS, image=image, generator=torch.Generator().manual_seed(5), **common).images
    assert calls == pytest.approx(sched.timesteps[1:].tolist())  # start, then each next evaluation
    assert close(painted, plain, 1e-8)  # their image encodings already differ by ~6e-9 (measured)


def test_add_noise_is_the_forward_process_in_sigma_space(sd64):
    """Grid timesteps get their evaluation's sigma exactly; training timesteps match DDPM's add_noise."""
    stock = sd64[1]
    sched = DODEScheduler.from_scheduler(stock, solver="heun", nfe=5)
    x0, n = noise((3, 4, 8, 8), seed=1), noise((3, 4, 8, 8), seed=2)
    k = 3
    assert torch.equal(sched.add_noise(x0, n, sched.timesteps[k]), x0 + sched.sigmas[2] * n)
    t = torch.tensor([999, 500, 20])
    abar = stock.alphas_cumprod.to(torch.float64)[t].reshape(-1, 1, 1, 1)
    ddpm = abar.sqrt() * x0 + (1 - abar).sqrt() * n  # DDPM's x_t; sigma space is x_t / sqrt(abar)
    torch.testing.assert_close(sched.add_noise(x0, n, t), ddpm / abar.sqrt(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="one per sample"):
        sched.add_noise(x0, n, t[:2])


def test_begin_index_must_start_a_step(sd64):
    sched = DODEScheduler.from_scheduler(sd64[1], solver="heun", nfe=5)
    with pytest.raises(ValueError, match="multiple of order=2"):
        sched.set_begin_index(1)
    with pytest.raises(ValueError, match="below 5"):
        sched.set_begin_index(6)
    sched.set_begin_index(2)
    assert sched.begin_index == sched.step_index == 2
    sched.scale_model_input(torch.zeros(1, 4, 8, 8), sched.timesteps[2])
    sched.step(torch.zeros(1, 4, 8, 8), sched.timesteps[2], torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="before the first step"):
        sched.set_begin_index(0)


@pytest.mark.parametrize("solver,nfe", [("euler", 4), ("heun", 5), ("unipc", 4)])
def test_sdxl_pipeline_equals_dode_sample(sdxl64, solver, nfe):
    """Two text encoders, pooled embeddings and time ids: the guided adapter sees what the pipeline does."""
    pipe, stock = sdxl64
    sched = DODEScheduler.from_scheduler(stock, solver=solver, nfe=nfe, lambdas=planted(nfe))
    x_T = noise((2, 4, 8, 8), seed=8)
    out = sd_latents(pipe, sched, x_T)
    lam = dode.Lambdas(planted(nfe), solver, sched.sigmas.tolist())
    ref = dode.sample(
        pipeline_denoiser(pipe, PROMPTS, guidance_scale=GUIDANCE), x_T, sched.sigmas, solver, lam
    )
    assert close(out, ref, 1e-10)


def test_sdxl_img2img_equals_dode_sample(sdxl64):
    pipe, stock = sdxl64
    values = planted(7)
    sched = DODEScheduler.from_scheduler(stock, solver="heun", nfe=7, lambdas=values)
    img2img = variant(StableDiffusionXLImg2ImgPipeline, pipe, sched, requires_aesthetics_score=False)
    x0 = noise((2, 4, 8, 8), seed=9) * 0.5
    out = img2img(
        PROMPTS,
        image=x0,
        strength=0.7,
        num_inference_steps=4,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(4),
        output_type="latent",
    ).images
    ref, begin = mid_grid_reference(pipe, sched, x0, noise((2, 4, 8, 8), seed=4), 0.7, values, "heun")
    assert begin == 4 and close(out, ref, 1e-10)


def test_sdxl_float32_matches_to_1e5():
    """In float32 the pipeline rounds its latents each step; the result still matches dode.sample."""
    pipe = tiny_sdxl_pipeline()
    sched = DODEScheduler.from_scheduler(pipe.scheduler, solver="dpmpp_2m", nfe=5, lambdas=planted(5))
    x_T = noise((2, 4, 8, 8), seed=10).float()
    out = sd_latents(pipe, sched, x_T)
    lam = dode.Lambdas(planted(5), "dpmpp_2m", sched.sigmas.tolist())
    ref = dode.sample(
        pipeline_denoiser(pipe, PROMPTS, guidance_scale=GUIDANCE), x_T, sched.sigmas, "dpmpp_2m", lam
    )
    assert out.dtype == torch.float32 and close(out.double(), ref, 1e-5)


def test_distill_pipeline_on_sdxl_ships_lambdas_that_sample_as_fitted(sdxl64):
    pipe, stock = sdxl64
    lam = distill_pipeline(
        pipe, PROMPTS, solver="euler", nfe=3, guidance_scale=GUIDANCE, samples_per_prompt=2, teacher={"factor": 2}
    )
    assert lam.nfe == 3 and lam.n_fit == 2
    sched = DODEScheduler.from_scheduler(stock, lambdas=lam)
    x_T = noise((2, 4, 8, 8), seed=12)
    ref = dode.sample(
        pipeline_denoiser(pipe, PROMPTS, guidance_scale=GUIDANCE), x_T, sched.sigmas, "euler", lam
    )
    assert close(sd_latents(pipe, sched, x_T), ref, 1e-10)


def irregular_grid() -> list[float]:
    """A learned-looking grid: no family's, strictly decreasing, inside SD's training range."""
    return [12.5, 7.25, 2.9, 1.1, 0.37, 0.0]


def test_explicit_grid_is_sampled_exactly_and_round_trips(sd64, tmp_path):
    pipe, stock = sd64
    lam = dode.Lambdas(planted(5), "dpmpp_2m", irregular_grid(), objective="final")
    sched = DODEScheduler.from_scheduler(stock, lambdas=lam)
    assert sched.sigmas.tolist() == irregular_grid() and sched.num_inference_steps == 5
    sched.save_pretrained(tmp_path / "scheduler")
    loaded = DODEScheduler.from_pretrained(tmp_path / "scheduler")
    assert loaded.sigmas.tolist() == irregular_grid() and torch.equal(loaded.timesteps, sched.timesteps)
    x_T = noise((2, 4, 8, 8), seed=13)
    out = sd_latents(pipe, loaded, x_T)
    ref = dode.sample(
        pipeline_denoiser(pipe, PROMPTS, guidance_scale=GUIDANCE), x_T, sched.sigmas, "dpmpp_2m", lam
    )
    assert close(out, ref, 1e-10)
    by_spec = DODEScheduler.from_scheduler(stock, solver="dpmpp_2m", grid=GridSpec.explicit(irregular_grid()))
    assert by_spec.sigmas.tolist() == irregular_grid()
    with pytest.raises(ValueError, match="makes 5 evaluations"):
        DODEScheduler.from_scheduler(
            stock, solver="dpmpp_2m", nfe=4, grid=GridSpec.explicit(irregular_grid())
        )
    with pytest.raises(ValueError, match="GridSpec.explicit"):
        DODEScheduler.from_scheduler(stock, solver="euler", nfe=4, grid="explicit")


def test_explicit_learned_grid_from_the_registry(sd64, tmp_path):
    from dode.store.lambdas import save_lambdas
    from dode.store.registry import Registry

    reg = Registry(str(tmp_path / "registry"))
    lam = dode.Lambdas(planted(5), "euler", irregular_grid(), objective="final")
    art = save_lambdas(reg, lam, "test/learned")
    sched = DODEScheduler.from_artifact(reg, art.id, sd64[1])
    assert sched.sigmas.tolist() == irregular_grid() and list(sched.config.lambdas) == list(lam.values)


def test_pipeline_sigmas_argument(sd64):
    """pipe(..., sigmas=...) samples a base DODEScheduler on those levels; fixed grids refuse others."""
    pipe, stock = sd64
    pipe.scheduler = DODEScheduler.from_scheduler(stock, solver="euler", nfe=4)
    x_T = noise((2, 4, 8, 8), seed=14)
    out = pipe(
        PROMPTS, sigmas=irregular_grid()[:-1], guidance_scale=GUIDANCE, latents=x_T, output_type="latent"
    ).images
    den = pipeline_denoiser(pipe, PROMPTS, guidance_scale=GUIDANCE)
    assert close(
        out, dode.sample(den, x_T, torch.tensor(irregular_grid(), dtype=torch.float64), "euler"), 1e-10
    )
    fixed = DODEScheduler.from_scheduler(stock, solver="euler", nfe=4, lambdas=planted(4))
    with pytest.raises(ValueError, match="drop sigmas="):
        fixed.set_timesteps(sigmas=irregular_grid())


def test_ddim_pipeline_drops_the_lambdas_and_dode_pipeline_recovers_them():
    """DDIMPipeline rebuilds a DDIMScheduler from the config: diffusers warns that the lambdas are ignored;
    the keys survive in its config, so DODEPipeline gets the DODEScheduler back."""
    unet = tiny_unet2d()
    sched = DODEScheduler.from_scheduler(DDPMScheduler(), solver="ipndm", nfe=4, lambdas=planted(4))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()  # other tests (and the flows) may have silenced diffusers
    diffusers_logging.set_verbosity_warning()
    logging.getLogger("diffusers").addHandler(handler)
    try:
        ddim = DDIMPipeline(unet=unet, scheduler=sched)
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
        diffusers_logging.set_verbosity(level)
    assert type(ddim.scheduler).__name__ == "DDIMScheduler"
    assert any(
        "'lambdas': [0.3, -0.3, 0.3, -0.3]" in r.getMessage() and "ignored" in r.getMessage() for r in records
    )
    recovered = DODEPipeline(unet=unet, scheduler=ddim.scheduler)
    assert isinstance(recovered.scheduler, DODEScheduler)
    assert list(recovered.scheduler.config.lambdas) == planted(4)
    x_T = noise((2, 1, 8, 8), seed=15)
    out = recovered(batch_size=2, latents=x_T, output_type="latent").images
    lam = dode.Lambdas(planted(4), "ipndm", sched.sigmas.tolist())
    ref = dode.sample(VPDenoiser(unet, DDPMScheduler().alphas_cumprod), x_T, sched.sigmas, "ipndm", lam)
    assert close(out, ref, 1e-10)


def test_cli_distill_pipeline_on_an_sdxl_folder(tmp_path, capsys, monkeypatch):
    """dode distill-pipeline loads a saved SDXL folder and writes a scheduler that loads back into it."""
    import dode.cli
    from dode.cli import main

    monkeypatch.setattr(dode.cli, "COMMANDS", {"distill-pipeline": dode.cli.COMMANDS["distill-pipeline"]})
    folder, out, prompts = tmp_path / "sdxl", tmp_path / "scheduler", tmp_path / "prompts.txt"
    tiny_sdxl_pipeline().save_pretrained(folder)
    prompts.write_text("a cat\ndog\n")
    args = ["distill-pipeline", str(folder), "--nfe", "3", "--prompts", str(prompts), "--guidance-scale", "2.0"]
    args += ["--teacher-factor", "2", "--samples-per-prompt", "2", "--no-register", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    pipe.scheduler = DODEScheduler.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.0, output_type="latent").images
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()
