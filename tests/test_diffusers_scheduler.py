"""DODEScheduler in stock diffusers pipelines: parity with dode.sample, round trips, wrong pipelines, CLI.

Everything is built from tiny randomly initialised components (no downloads): a Stable Diffusion
pipeline (UNet2DConditionModel, AutoencoderKL, CLIP text model, a character-level CLIPTokenizer) and
an unconditional UNet2DModel.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDPMPipeline,
    DDPMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import dode
from dode.integrations.diffusers.distill import pipeline_denoiser
from dode.integrations.diffusers.pipeline import DODEPipeline
from dode.integrations.diffusers.scheduler import DODEScheduler
from dode.models import VPDenoiser
from dode.store.lambdas import load_lambdas

PROMPTS = ["a cat", "dog"]
GUIDANCE = 3.0


def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer (no merges), built offline."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8)


def tiny_clip_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=8,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=32,
    )


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        latent_channels=4,
        norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16,
    )


def tiny_unet2d(seed: int = 1) -> UNet2DModel:
    """An unconditional 1-channel 8x8 UNet2DModel in float64."""
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=32,
    )
    return unet.to(torch.float64).eval()


def tiny_sd_pipeline() -> StableDiffusionPipeline:
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(tiny_clip_config(tokenizer))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = tiny_vae()
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets: one intra-op thread is several times faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A tiny SD pipeline saved as a diffusers folder (float32)."""
    path = tmp_path_factory.mktemp("sd") / "pipe"
    tiny_sd_pipeline().save_pretrained(path)
    return path


def tiny_sd64() -> tuple[StableDiffusionPipeline, PNDMScheduler]:
    """The tiny SD pipeline in float64, with its stock scheduler kept aside."""
    pipe = tiny_sd_pipeline().to(torch.float64)
    return pipe, pipe.scheduler


sd64 = pytest.fixture(scope="module")(tiny_sd64)


@pytest.fixture(scope="module")
def unet64():
    return tiny_unet2d(), DDPMScheduler(beta_schedule="linear")


def noise(shape, seed=1):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def sd_latents(pipe, scheduler, x_T):
    pipe.scheduler = scheduler
    return pipe(
        PROMPTS,
        num_inference_steps=scheduler.num_inference_steps,
        guidance_scale=GUIDANCE,
        latents=x_T,
        output_type="latent",
    ).images


def planted(nfe):
    return [0.3 * (-1) ** k for k in range(nfe)]


@pytest.mark.parametrize(
    "solver,nfe,correction",
    [
        ("euler", 4, "data"),
        ("heun", 5, "data"),
        ("dpmpp_2m", 4, "data"),
        ("ipndm", 4, "data"),
        ("euler", 4, "noise"),
    ],
)
def test_sd_pipeline_equals_dode_sample(sd64, solver, nfe, correction):
    """StableDiffusionPipeline + DODEScheduler (CFG, 2 prompts) == dode.sample on the guided adapter."""
    pipe, stock = sd64
    sched = DODEScheduler.from_scheduler(
        stock, solver=solver, nfe=nfe, lambdas=planted(nfe), correction=correction
    )
    x_T = noise((2, 4, 8, 8))
    out = sd_latents(pipe, sched, x_T)
    assert len(sched.timesteps) == nfe and sched.order == (2 if solver == "heun" else 1)
    lam = dode.Lambdas(planted(nfe), solver, sched.sigmas.tolist(), correction)
    ref = dode.sample(
        pipeline_denoiser(pipe, PROMPTS, guidance_scale=GUIDANCE), x_T, sched.sigmas, solver, lam
    )
    assert out.dtype == torch.float64
    assert (out - ref).abs().max() <= 1e-10 * ref.abs().max()  # same float64 ops: equal up to rounding


def test_zero_lambdas_are_the_base_solver(sd64):
    """lambda = 0 is the base solver bit for bit; Euler/Karras matches diffusers' own Euler scheduler."""
    pipe, stock = sd64
    x_T = noise((2, 4, 8, 8), seed=2)
    base = sd_latents(pipe, DODEScheduler.from_scheduler(stock, solver="euler", nfe=5), x_T)
    zero = sd_latents(
        pipe, DODEScheduler.from_scheduler(stock, solver="euler", nfe=5, lambdas=[0.0] * 5), x_T
    )
    assert torch.equal(base, zero)
    euler = EulerDiscreteScheduler.from_config(stock.config, use_karras_sigmas=True)
    pipe.scheduler = euler
    diffusers_out = pipe(
        PROMPTS, num_inference_steps=5, guidance_scale=GUIDANCE, latents=x_T, output_type="latent"
    ).images
    assert (
        base - diffusers_out
    ).abs().max() <= 1e-4 * base.abs().max()  # diffusers' Euler keeps float32 sigmas


def test_heun_steps_and_progress_contract(sd64):
    """Heun: N steps, 2N - 1 evaluations; one timestep per evaluation and order 2 (diffusers' convention)."""
    sched = DODEScheduler.from_scheduler(sd64[1], solver="heun", nfe=7)
    assert sched.num_inference_steps == 4 and len(sched.timesteps) == 7 and sched.order == 2
    plain = DODEScheduler.from_config(
        sd64[1].config, solver="heun"
    )  # no grid yet: num_inference_steps decides
    plain.set_timesteps(4)
    assert torch.equal(plain.sigmas, sched.sigmas) and torch.equal(plain.timesteps, sched.timesteps)
    assert sched.init_noise_sigma == pytest.approx(float(sched.sigmas[0]))
    assert torch.equal(sched.timesteps[1], sched.timesteps[2])  # corrector of step 0 and predictor of step 1


def test_config_round_trip_keeps_lambdas(sd64, tmp_path):
    pipe, stock = sd64
    lam = dode.Lambdas(planted(5), "heun", dode.karras_sigmas(3, 0.03, 14.0).tolist(), "noise")
    sched = DODEScheduler.from_scheduler(stock, lambdas=lam)
    sched.save_pretrained(tmp_path / "scheduler")
    loaded = DODEScheduler.from_pretrained(tmp_path / "scheduler")
    assert list(loaded.config.lambdas) == list(lam.values) and list(loaded.config.sigmas) == list(lam.sigmas)
    assert (loaded.config.solver, loaded.config.correction) == ("heun", "noise")
    assert json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())["lambdas"] == list(
        lam.values
    )
    x_T = noise((2, 4, 8, 8), seed=3)
    assert torch.equal(sd_latents(pipe, sched, x_T), sd_latents(pipe, loaded, x_T))


def test_pipeline_folder_round_trip(sd_folder, tmp_path):
    """A whole pipeline saved with a DODEScheduler loads it back with its lambdas, dode imported (model_index.json
    names it ["dode", "DODEScheduler"]; tests/test_diffusers_loading.py loads it in a fresh process)."""
    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    pipe.scheduler = DODEScheduler.from_scheduler(
        pipe.scheduler, solver="dpmpp_2m", nfe=3, lambdas=[0.0, 0.5, -0.2]
    )
    pipe.save_pretrained(tmp_path / "with-dode")
    back = StableDiffusionPipeline.from_pretrained(tmp_path / "with-dode")
    assert isinstance(back.scheduler, DODEScheduler)
    assert list(back.scheduler.config.lambdas) == [0.0, 0.5, -0.2]
    assert torch.equal(back.scheduler.sigmas, pipe.scheduler.sigmas)


def test_dode_pipeline_equals_dode_sample(unet64):
    """The unconditional loop (init_noise_sigma, scale_model_input) == dode.sample on VPDenoiser."""
    unet, ddpm = unet64
    sched = DODEScheduler.from_scheduler(ddpm, solver="ipndm", nfe=4, grid="time_uniform", lambdas=planted(4))
    x_T = noise((3, 1, 8, 8), seed=4)
    out = DODEPipeline(unet=unet, scheduler=sched)(batch_size=3, latents=x_T, output_type="latent").images
    den = VPDenoiser(unet, ddpm.alphas_cumprod)
    ref = dode.sample(
        den, x_T, sched.sigmas, "ipndm", dode.Lambdas(planted(4), "ipndm", sched.sigmas.tolist())
    )
    assert (out - ref).abs().max() <= 1e-10 * ref.abs().max()  # same float64 ops: equal up to rounding
    images = DODEPipeline(unet=unet, scheduler=sched)(batch_size=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1) and 0 <= images.min() <= images.max() <= 1


def test_ddpm_pipeline_is_refused(unet64):
    """DDPMPipeline never scales the input: the scheduler raises instead of returning wrong images."""
    unet, ddpm = unet64
    sched = DODEScheduler.from_scheduler(ddpm, solver="euler", nfe=3, lambdas=[0.0, 0.1, 0.1])
    with pytest.raises(ValueError, match="DODEPipeline"):
        DDPMPipeline(unet=unet, scheduler=sched)(batch_size=1, num_inference_steps=3, output_type="np")


def test_bad_inputs_get_clear_errors(sd64):
    stock = sd64[1]
    sched = DODEScheduler.from_scheduler(stock, solver="euler", nfe=4, lambdas=planted(4))
    with pytest.raises(ValueError, match="num_inference_steps=4"):
        sched.set_timesteps(50)
    with pytest.raises(ValueError, match="one lambda per network evaluation"):
        DODEScheduler.from_scheduler(stock, solver="heun", nfe=5, lambdas=planted(4))
    with pytest.raises(ValueError, match="unknown solver"):
        DODEScheduler.from_scheduler(stock, solver="rk45", nfe=4)
    with pytest.raises(ValueError, match="drop solver="):
        DODEScheduler.from_scheduler(
            stock, solver="euler", lambdas=dode.Lambdas([0, 0], "heun", [14.0, 1.0, 0.0])
        )
    with pytest.raises(ValueError, match="outside this training"):
        DODEScheduler.from_scheduler(stock, lambdas=dode.Lambdas([0, 0], "euler", [80.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="DDPM training schedule"):
        DODEScheduler.from_scheduler(
            {"_class_name": "EDMEulerScheduler", "sigma_max": 80.0}, solver="euler", nfe=4
        )
    sched.set_timesteps()
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="in order"):
        sched.scale_model_input(x, sched.timesteps[1])


def test_guided_denoiser_rows_cycle_through_prompts(sd64):
    """Row i uses prompt i mod P, so the distiller's fit and held-out batches keep their prompts."""
    pipe = sd64[0]
    both = pipeline_denoiser(pipe, PROMPTS, guidance_scale=GUIDANCE)
    first = pipeline_denoiser(pipe, PROMPTS[:1], guidance_scale=GUIDANCE)
    x, sigma = noise((4, 4, 8, 8), seed=5) * 3.0, torch.full((4,), 3.0, dtype=torch.float64)
    out = both(x, sigma)
    assert torch.allclose(out[0::2], first(x[0::2], sigma[0::2]), rtol=0, atol=1e-12)
    assert not torch.allclose(out[1::2], first(x[1::2], sigma[1::2]))
    with pytest.raises(ValueError, match="multiple of 2"):
        both(x[:3], sigma[:3])


def test_from_artifact_builds_the_registered_scheduler(sd64, tmp_path):
    from dode.store.lambdas import save_lambdas
    from dode.store.registry import Registry

    reg = Registry(str(tmp_path / "registry"))
    lam = dode.Lambdas(planted(3), "euler", dode.karras_sigmas(3, 0.03, 14.0).tolist())
    art = save_lambdas(reg, lam, "test/euler/nfe3")
    sched = DODEScheduler.from_artifact(reg, art.id[:10], sd64[1])
    assert list(sched.config.lambdas) == list(lam.values) and sched.config.artifact_id == art.id
    other = reg.publish("report", "not-lambdas", {"report.json": b"{}"})
    with pytest.raises(ValueError, match="not 'lambdas'"):
        DODEScheduler.from_artifact(reg, other.id, sd64[1])


def test_cli_distill_pipeline(sd_folder, tmp_path, capsys, monkeypatch):
    """dode distill-pipeline on a saved tiny SD folder: registers the lambdas, writes the scheduler folder."""
    import dode.cli
    from dode.cli import main
    from dode.store.registry import Registry

    monkeypatch.setattr(dode.cli, "COMMANDS", {"distill-pipeline": dode.cli.COMMANDS["distill-pipeline"]})

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\ndog\n")
    registry, out = tmp_path / "registry", tmp_path / "scheduler"
    rc = main(
        [
            "distill-pipeline",
            str(sd_folder),
            "--solver",
            "euler",
            "--nfe",
            "3",
            "--prompts",
            str(prompts),
            "--guidance-scale",
            "2.0",
            "--teacher-factor",
            "2",
            "--samples-per-prompt",
            "2",
            "--registry",
            str(registry),
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    reg = Registry(str(registry))
    (art,) = reg.find("lambdas")
    assert art.params["n_prompts"] == 2 and art.params["guidance_scale"] == 2.0
    lam = load_lambdas(reg, art)
    assert lam.nfe == 3 and lam.n_fit == 2 and lam.guard["split"]["guard"] == 2
    assert f"guard: kept {lam.guard['chosen']}" in printed.out and "guard: off" not in printed.out
    sched = DODEScheduler.from_pretrained(out)
    assert list(sched.config.lambdas) == list(lam.values) and sched.config.artifact_id == art.id
    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    pipe.scheduler = sched
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.0, output_type="latent").images
    assert torch.isfinite(latents).all()
    assert (
        main(["distill-pipeline", str(sd_folder), "--nfe", "3", "--prompts", str(tmp_path / "missing.txt")])
        == 2
    )
