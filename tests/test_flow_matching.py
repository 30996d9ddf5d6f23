"""Flow-matching models: the sigma-space adapter, diffusers' flow grids, DODEScheduler in SD3 and FLUX
pipelines (tiny random configs, prompt embeddings passed directly), and the embedded digits-flow model."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDPMPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
)
from helpers import one_thread  # noqa: F401  (autouse: one torch thread)

import dode
from dode.cli import main
from dode.core.grids import GridSpec
from dode.integrations.diffusers.scheduler import DODEFlowScheduler, DODEScheduler
from dode.metrics.digits import fd_digits, load_digits_images
from dode.models import FLOW_MODEL_DIR, FlowDenoiser, FlowSchedule, GaussianDenoiser, load_model
from dode.models.flow import (
    FLOW_SIGMA_MAX,
    flux_call,
    pack_latents,
    sd3_call,
    unpack_latents,
)
from dode.training.digits import sample_digits, train_digits_model

FLUX_CONFIG = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
               "base_image_seq_len": 256, "max_image_seq_len": 4096}
FD_FLOW_BOUND = 100.0  # 300 samples, 50 Euler steps vs all digits: digits-flow 48.3, digits-ddpm 55.6, noise ~3000


def gaussian_velocity(mu: torch.Tensor, s: float):
    """The exact velocity E[eps - x0 | x_t] of x_t = (1 - t) x0 + t eps, x0 ~ N(mu, s^2 I), as a network
    taking (x_t, 1000 t): x_t ~ N((1 - t) mu, v I) with v = (1 - t)^2 s^2 + t^2, so
    E[x0 | x_t] = mu + (1 - t) s^2 / v (x_t - (1 - t) mu) and E[eps | x_t] = t / v (x_t - (1 - t) mu)."""

    def velocity(x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = (timestep.to(torch.float64) / 1000).reshape(-1, *([1] * (x_t.ndim - 1)))
        v = (1 - t) ** 2 * s**2 + t**2
        centred = x_t - (1 - t) * mu
        return t / v * centred - (mu + (1 - t) * s**2 / v * centred)

    return velocity


def test_adapter_is_the_exact_denoiser_of_a_gaussian():
    mu, s = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64).reshape(1, 4, 4), 0.4
    den = FlowDenoiser(gaussian_velocity(mu, s))
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    sigma = torch.tensor([1e-3, 0.1, 0.7, 2.0, 30.0, 1e4], dtype=torch.float64)
    torch.testing.assert_close(den(x, sigma), GaussianDenoiser(mu, s)(x, sigma), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("config, mu", [
    ({"shift": 1.0}, None),
    ({"shift": 3.0}, None),
    ({"shift": 0.5, "shift_terminal": 0.02}, None),
    (FLUX_CONFIG, 0.83),
    ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, 1.4),
])
def test_flow_grid_is_diffusers_sigmas_and_timesteps(config, mu):
    stock = FlowMatchEulerDiscreteScheduler(**config)
    ours = DODEScheduler.from_scheduler(stock, solver="euler", nfe=7)
    assert isinstance(ours, DODEFlowScheduler) and ours.config.grid["family"] == "flow"
    for n in (2, 7, 20):
        stock.set_timesteps(n, mu=mu)
        ours.set_timesteps(n, mu=mu)
        t = ours.sigmas / (1 + ours.sigmas)  # t = sigma / (1 + sigma); t = 1 is sigma = FLOW_SIGMA_MAX
        torch.testing.assert_close(t.float(), stock.sigmas, rtol=2e-7, atol=1e-7)
        torch.testing.assert_close(ours.timesteps, stock.timesteps, rtol=1e-6, atol=0)
        assert float(ours.sigmas[0]) == FLOW_SIGMA_MAX and len(ours.timesteps) == n


def test_flux_sigmas_argument_is_shifted_like_the_stock_scheduler():
    stock, ours = FlowMatchEulerDiscreteScheduler(**FLUX_CONFIG), DODEFlowScheduler(**FLUX_CONFIG)
    times = torch.linspace(1.0, 1 / 6, 6, dtype=torch.float64).tolist()
    stock.set_timesteps(sigmas=times, mu=1.02)
    ours.set_timesteps(sigmas=times, mu=1.02)
    torch.testing.assert_close(ours.timesteps, stock.timesteps, rtol=1e-6, atol=0)


def sd3_pipeline():
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None,
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_pipeline():
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_CONFIG), vae=None, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def counted_run(pipe, scheduler, **kwargs):
    """The pipeline's final latents with ``scheduler``, and how many times it called its transformer."""
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    pipe.scheduler = scheduler
    try:
        with torch.no_grad():
            out = pipe(output_type="latent", **({"height": 64, "width": 64} | kwargs)).images
    finally:
        hook.remove()
    return out, len(calls)


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


def sd3_embeddings(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"prompt_embeds": torch.randn(2, 7, 32, generator=g), "pooled_prompt_embeds": torch.randn(2, 64, generator=g)}


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_sd3_pipeline_zero_lambda_euler_is_the_stock_scheduler(guidance):
    pipe, emb = sd3_pipeline(), sd3_embeddings()
    negative = {f"negative_{k}": v.flip(0) for k, v in emb.items()} if guidance > 1 else {}
    kwargs = dict(**emb, **negative, guidance_scale=guidance, num_inference_steps=6)
    stock, stock_calls = counted_run(pipe, pipe.scheduler, generator=torch.Generator().manual_seed(3), **kwargs)
    ours, calls = counted_run(pipe, DODEScheduler.from_scheduler(pipe.scheduler, solver="euler", nfe=6),
                              generator=torch.Generator().manual_seed(3), **kwargs)
    assert calls == stock_calls == 6
    assert relative(ours, stock) < 1e-5


@pytest.mark.parametrize("solver, nfe, lambdas", [
    ("dpmpp_2m", 5, None), ("unipc", 4, None), ("euler", 5, [0.0, 0.1, -0.2, 0.3, 0.05]),
])
def test_sd3_pipeline_equals_dode_sample_on_the_adapter(solver, nfe, lambdas):
    """DODEScheduler in StableDiffusion3Pipeline == dode.sample on FlowDenoiser(transformer) from the same
    unit noise, with exactly NFE transformer calls."""
    pipe, emb = sd3_pipeline(), sd3_embeddings()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    den = FlowDenoiser(sd3_call(pipe.transformer), FlowSchedule(shift=3.0),
                       model_kwargs={"encoder_hidden_states": emb["prompt_embeds"],
                                     "pooled_projections": emb["pooled_prompt_embeds"]})
    steps = GridSpec.for_nfe("flow", solver, nfe).steps
    grid = GridSpec("flow", steps).sigmas(den)
    lam = None if lambdas is None else dode.Lambdas(tuple(lambdas), solver, tuple(grid.tolist()))
    scheduler = DODEScheduler.from_scheduler(pipe.scheduler, solver=solver, nfe=nfe, lambdas=lam)
    out, calls = counted_run(pipe, scheduler, latents=noise, guidance_scale=1.0, num_inference_steps=steps, **emb)
    with torch.no_grad():
        ref = dode.sample(den, noise.double(), grid, solver, lam)
    assert calls == nfe
    assert relative(out.double(), ref) < 1e-5
    if lambdas is not None:
        base, _ = counted_run(pipe, DODEScheduler.from_scheduler(pipe.scheduler, solver=solver, nfe=nfe),
                              latents=noise, guidance_scale=1.0, num_inference_steps=steps, **emb)
        assert relative(out, base) > 1e-3  # the lambdas act


def test_sd3_img2img_zero_lambda_euler_is_the_stock_scheduler():
    """strength < 1: set_begin_index and scale_noise (x_t = (1 - t) x0 + t eps), then the rest of the grid."""
    base = sd3_pipeline()
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64), latent_channels=4, norm_num_groups=32, sample_size=16, shift_factor=0.1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    pipe = StableDiffusion3Img2ImgPipeline(**{**base.components, "vae": vae.eval()})
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    kwargs = dict(**sd3_embeddings(), image=image, strength=0.6, guidance_scale=1.0, num_inference_steps=5)
    runs = [counted_run(pipe, s, generator=torch.Generator().manual_seed(3), **kwargs)
            for s in (pipe.scheduler, DODEScheduler.from_scheduler(pipe.scheduler, solver="euler", nfe=5))]
    (stock, stock_calls), (ours, calls) = runs
    assert calls == stock_calls == 3
    assert relative(ours, stock) < 1e-5


def flux_embeddings():
    g = torch.Generator().manual_seed(1)
    return {"prompt_embeds": torch.randn(1, 7, 32, generator=g), "pooled_prompt_embeds": torch.randn(1, 32, generator=g)}


def test_flux_pipeline_zero_lambda_euler_is_the_stock_scheduler():
    pipe, emb = flux_pipeline(), flux_embeddings()
    stock, stock_calls = counted_run(pipe, pipe.scheduler, generator=torch.Generator().manual_seed(3),
                                     num_inference_steps=5, **emb)
    ours, calls = counted_run(pipe, DODEScheduler.from_scheduler(pipe.scheduler, solver="euler", nfe=5),
                              generator=torch.Generator().manual_seed(3), num_inference_steps=5, **emb)
    assert calls == stock_calls == 5
    assert relative(ours, stock) < 1e-5


def test_flux_pipeline_equals_dode_sample_on_the_adapter():
    """FLUX's own grid (linspace(1, 1/N, N), dynamically shifted at its sequence length), packing, and
    lambdas fitted on that grid shipped into the pipeline."""
    pipe, emb = flux_pipeline(), flux_embeddings()
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    schedule = FlowSchedule.from_config(pipe.scheduler.config)
    grid = schedule.sigmas(4, schedule.mu(16), times=torch.linspace(1.0, 1 / 4, 4, dtype=torch.float64))
    lam = dode.Lambdas((0.0, 0.2, -0.1, 0.1), "dpmpp_2m", tuple(grid.tolist()))
    scheduler = DODEScheduler.from_scheduler(pipe.scheduler, lambdas=lam)
    out, calls = counted_run(pipe, scheduler, latents=pack_latents(noise), num_inference_steps=4, **emb)
    den = FlowDenoiser(flux_call(pipe.transformer), schedule, model_kwargs={
        "encoder_hidden_states": emb["prompt_embeds"], "pooled_projections": emb["pooled_prompt_embeds"],
        "txt_ids": torch.zeros(7, 3), "guidance": None})
    with torch.no_grad():
        ref = dode.sample(den, noise.double(), grid, "dpmpp_2m", lam)
    assert calls == 4
    assert relative(unpack_latents(out, tuple(noise.shape)).double(), ref) < 1e-5


@pytest.mark.parametrize("solver", sorted(n for n, s in dode.SOLVERS.items() if not s.infinite_start))
def test_solvers_that_cannot_start_at_t_one_are_refused_with_the_alternatives(solver):
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0)
    with pytest.raises(ValueError, match="cannot start at t = 1") as refused:
        DODEScheduler.from_scheduler(stock, solver=solver, nfe=5)
    assert all(f"'{n}'" in str(refused.value) for n, s in dode.SOLVERS.items() if s.infinite_start)
    other = DODEScheduler.from_scheduler(stock, solver=solver, nfe=5, grid="karras")
    assert other.nfe == 5 and float(other.sigmas[0]) == 80.0


@pytest.mark.parametrize("solver", sorted(n for n, s in dode.SOLVERS.items() if s.infinite_start))
def test_solvers_allowed_at_t_one_converge_to_the_exact_gaussian_solution(solver):
    """From t = 1 (x_1 = n) the flow ODE of N(mu, s^2) data ends at mu + s n (sigma space: Karras et al.)."""
    mu, s = torch.full((1, 4, 4), 0.3, dtype=torch.float64), 0.5
    den = FlowDenoiser(gaussian_velocity(mu, s), FlowSchedule(shift=3.0))
    n = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = [float((dode.sample(den, n, den.flow_sigmas(k), solver) - (mu + s * n)).abs().max()) for k in (10, 80)]
    assert errors[1] < errors[0] / 3 and errors[1] < 0.1, errors


def test_config_round_trip(tmp_path):
    scheduler = DODEScheduler.from_scheduler(FlowMatchEulerDiscreteScheduler(**FLUX_CONFIG), solver="dpmpp_2m",
                                             nfe=5, lambdas=[0.1] * 5, grid=GridSpec.explicit(
                                                 FlowSchedule(shift=3.0).sigmas(5)))
    scheduler.save_pretrained(tmp_path)
    for back in (DODEFlowScheduler.from_pretrained(tmp_path), DODEScheduler.from_pretrained(tmp_path)):
        assert isinstance(back, DODEFlowScheduler)
        assert back.config.lambdas == [0.1] * 5 and back.config.use_dynamic_shifting
        torch.testing.assert_close(back.sigmas, scheduler.sigmas)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["_class_name"] == "DODEFlowScheduler"


def test_load_model_reads_the_transformer_of_sd3_and_flux_folders(tmp_path):
    """Only the network and the scheduler config are read: folders without text encoders or VAE load."""
    sd3, flux = sd3_pipeline(), flux_pipeline()
    sd3.save_pretrained(tmp_path / "sd3")
    flux.save_pretrained(tmp_path / "flux")
    loaded = load_model(str(tmp_path / "sd3"))
    assert isinstance(loaded.denoiser, FlowDenoiser) and loaded.shape == (4, 8, 8) and loaded.denoiser.mu is None
    emb = sd3_embeddings()
    kwargs = {"encoder_hidden_states": emb["prompt_embeds"], "pooled_projections": emb["pooled_prompt_embeds"]}
    loaded.denoiser.model_kwargs = kwargs
    here = FlowDenoiser(sd3_call(sd3.transformer), FlowSchedule(shift=3.0), model_kwargs=kwargs)
    x, sigma = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.5, 4.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded.denoiser(x, sigma), here(x, sigma), rtol=1e-6, atol=1e-6)
    flux_model = load_model(str(tmp_path / "flux"))
    # FLUX's default 128 x 128 latents are 64 x 64 = 4096 tokens: mu = max_shift.
    assert flux_model.shape == (4, 128, 128) and flux_model.denoiser.mu == pytest.approx(1.15)


def test_train_model_only_flow_writes_a_loadable_flow_folder(tmp_path, capsys):
    args = ["--only", "flow", "--steps", "3", "--samples", "16", "--sample-steps", "3", "--out", str(tmp_path)]
    assert main(["train-model", *args]) == 0
    out = capsys.readouterr().out
    assert "digits-flow FD-digits" in out and "digits-ddpm" not in out
    assert not (tmp_path / "digits-ddpm").exists() and not (tmp_path / "digits-classifier").exists()
    assert isinstance(load_model(str(tmp_path / "digits-flow")).denoiser, FlowDenoiser)
    assert main(["train-model", *args, "--score-only"]) == 0  # scores the folder again, trains nothing
    out = capsys.readouterr().out
    assert "digits-flow FD-digits" in out and "final loss" not in out


# ---- the embedded digits-flow model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_flow():
    return load_model("digits-flow")


def test_digits_flow_is_registered_like_digits_ddpm(digits_flow):
    assert isinstance(digits_flow.denoiser, FlowDenoiser) and digits_flow.shape == (1, 8, 8)
    assert digits_flow.metrics == ("fd-digits",) and digits_flow.reference == "sklearn-digits"
    assert digits_flow.folder == FLOW_MODEL_DIR and len(digits_flow.fingerprint) == 64
    assert digits_flow.fingerprint == load_model(str(FLOW_MODEL_DIR)).fingerprint
    assert sum(p.stat().st_size for p in FLOW_MODEL_DIR.rglob("*") if p.is_file()) <= 5e6


def test_digits_flow_many_step_samples_are_digits(digits_flow):
    images, _ = load_digits_images()
    fd = fd_digits(sample_digits(digits_flow.denoiser, 300, steps=50, seed=1), images)
    noise = torch.rand((300, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert fd < FD_FLOW_BOUND < fd_digits(noise, images) / 4, fd


def test_stock_ddpm_pipeline_over_the_folder_is_dode_euler_on_the_flow_grid(digits_flow):
    """The folder is a working diffusers pipeline: DDPMPipeline's loop with the FlowMatchEulerDiscreteScheduler
    is flow-matching Euler, which dode's Euler reproduces on the flow grid."""
    pipe = DDPMPipeline.from_pretrained(FLOW_MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(batch_size=4, num_inference_steps=8, generator=torch.Generator().manual_seed(2),
                 output_type="np").images
    noise = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = dode.sample(digits_flow.denoiser, noise.double(), GridSpec("flow", 8).sigmas(digits_flow.denoiser), "euler")
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(ours - stock).max() < 1e-5


def test_dode_distills_and_samples_on_digits_flow(digits_flow):
    den = digits_flow.denoiser
    noise = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sigmas = GridSpec("flow", 4).sigmas(den)
    with torch.no_grad():
        lam = dode.distill(den, noise, sigmas, "dpmpp_2m", {"factor": 4}, {"guard": False})
        teacher = dode.sample(den, noise[48:], dode.refine(sigmas, 8), "dpmpp_2m")
        base = dode.sample(den, noise[48:], sigmas, "dpmpp_2m")
        corrected = dode.sample(den, noise[48:], torch.tensor(lam.sigmas, dtype=torch.float64), "dpmpp_2m", lam)
    assert lam.nfe == 4 and any(abs(v) > 1e-4 for v in lam.values)
    assert (corrected - teacher).pow(2).mean() < (base - teacher).pow(2).mean()


def test_train_digits_flow_is_reproducible(tmp_path):
    train_digits_model(tmp_path / "a", objective="flow", steps=3, log=lambda line: None)
    train_digits_model(tmp_path / "b", objective="flow", steps=3, log=lambda line: None)
    a, b = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    assert isinstance(a.denoiser, FlowDenoiser) and a.fingerprint == b.fingerprint


def test_bad_flow_inputs_get_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown training objective 've'; choose one of \['epsilon', 'flow'\]"):
        train_digits_model(tmp_path / "m", objective="ve")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ValueError, match=r"options \['use_karras_sigmas'\] are not supported"):
        DODEScheduler.from_scheduler(FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), solver="euler", nfe=4)
    with pytest.raises(ValueError, match="pass mu"):
        DODEFlowScheduler(**FLUX_CONFIG).set_timesteps(4)
    with pytest.raises(ValueError, match="grid family 'flow' needs a flow-matching model"):
        GridSpec("flow", 4).sigmas(GaussianDenoiser(torch.zeros(1, 2, 2), 0.5))
    with pytest.raises(ValueError, match="custom timesteps= are not supported"):
        DODEFlowScheduler().set_timesteps(timesteps=[900.0, 500.0])
