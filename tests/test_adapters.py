"""Model adapters: diffusers VP models (eps / v / x0, learned variance, class labels and guidance), EDM
preconditioning, the model registry."""

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DConditionModel, UNet2DModel

import dode
from dode.models import EDMDenoiser, VPDenoiser, load_model
from dode.models.vp import ClassConditionalUNet

ABAR = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod


def tiny_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8)
    return unet.to(torch.float64).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def test_sigma_to_t_inverts_the_training_table_and_interpolates_in_log_sigma(unet):
    den = VPDenoiser(unet, ABAR)
    t = torch.tensor([0, 1, 500, 999])
    assert torch.equal(den.sigma_to_t(den.sigmas_train[t]), t.to(torch.float64))
    mid = (den.sigmas_train[10].log() * 0.75 + den.sigmas_train[11].log() * 0.25).exp()
    assert float(den.sigma_to_t(mid[None])) == pytest.approx(10.25, abs=1e-9)
    assert float(den.sigma_to_t(torch.tensor([1e-9]))) == 0.0 and float(den.sigma_to_t(torch.tensor([1e9]))) == 999.0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_vp_adapter_converts_each_prediction_type_to_x0(prediction_type, unet):
    den = VPDenoiser(unet, ABAR, prediction_type)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([999, 400, 20])
    sigma = den.sigmas_train[t]
    a = ABAR.to(torch.float64)[t].reshape(-1, 1, 1, 1)
    x_vp = x * a.sqrt()  # x_VE = x_VP / sqrt(abar)
    out = unet(x_vp, t.to(torch.float64)).sample
    expected = {
        "epsilon": (x_vp - (1 - a).sqrt() * out) / a.sqrt(),
        "v_prediction": a.sqrt() * x_vp - (1 - a).sqrt() * out,
        "sample": out,
    }[prediction_type]
    torch.testing.assert_close(den(x, sigma), expected, rtol=1e-10, atol=1e-10)


def test_conditioning_is_passed_through_to_a_conditional_unet():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                layers_per_block=1, norm_num_groups=8).eval()
    cond_a, cond_b = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    x, sigma = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.full((2,), 3.0, dtype=torch.float64)
    out_a = VPDenoiser(unet, ABAR, model_kwargs={"encoder_hidden_states": cond_a})(x, sigma)
    out_b = VPDenoiser(unet, ABAR, model_kwargs={"encoder_hidden_states": cond_b})(x, sigma)
    assert out_a.dtype == torch.float64 and not torch.allclose(out_a, out_b)


def test_from_pretrained_loads_a_local_pipeline_folder_offline(tmp_path, unet, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    DDPMPipeline(unet=unet.to(torch.float32), scheduler=DDPMScheduler(prediction_type="v_prediction")).save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    assert model.shape == (1, 8, 8) and model.denoiser.prediction_type == "v_prediction"
    x0 = dode.sample(model.denoiser, torch.randn(2, 1, 8, 8), dode.vp_sigmas(ABAR, 4), "euler")
    assert x0.shape == (2, 1, 8, 8) and torch.isfinite(x0).all()
    assert load_model(str(tmp_path)).fingerprint == model.fingerprint


def test_edm_preconditioning_matches_table_1():
    def raw(x, c_noise):
        return torch.sin(x) + c_noise.reshape(-1, 1)

    den = EDMDenoiser(raw, preconditioned=False, sigma_data=0.5)
    x, s = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0.1, 10.0], dtype=torch.float64)
    sd = 0.5
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
    c_in, c_noise = 1 / (s**2 + sd**2).sqrt(), s.log() / 4
    expected = c_skip[:, None] * x + c_out[:, None] * raw(c_in[:, None] * x, c_noise)
    torch.testing.assert_close(den(x, s), expected)
    assert torch.equal(EDMDenoiser(lambda x, s: x * 2)(x, s), x * 2)


def test_unknown_model_lists_the_registered_names():
    with pytest.raises(ValueError, match="unknown model 'cifar'; choose one of .*gaussian"):
        load_model("cifar")


def tiny_class_unet(out_channels: int = 1, seed: int = 3) -> UNet2DModel:
    """Three classes plus the null class 3 (label dropout), optionally with learned variance."""
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8, num_class_embeds=4)
    return unet.to(torch.float64).eval()


def test_learned_variance_uses_the_eps_half():
    """out_channels = 2 x in_channels (improved DDPM / ADM): D comes from the first C channels only."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8).to(torch.float64).eval()
    den = VPDenoiser(unet, ABAR)
    x, t = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([700, 30])
    sigma, a = den.sigmas_train[t], ABAR.to(torch.float64)[t].reshape(-1, 1, 1, 1)
    eps = unet(x * a.sqrt(), t.to(torch.float64)).sample[:, :1]
    torch.testing.assert_close(den(x, sigma), x - sigma.reshape(-1, 1, 1, 1) * eps, rtol=1e-12, atol=1e-12)
    x0 = dode.sample(den, torch.randn(2, 1, 8, 8), dode.vp_sigmas(ABAR, 4), "euler")
    assert x0.shape == (2, 1, 8, 8) and torch.isfinite(x0).all()
    with pytest.raises(ValueError, match="twice its channels"):
        VPDenoiser(lambda x_vp, t: torch.cat([x_vp] * 3, dim=1), ABAR)(x, sigma)


def test_class_labels_are_per_sample():
    """Row i gets label i (or labels[i mod L]): each row equals a single-label run, and labels matter."""
    unet = tiny_class_unet()
    x, sigma = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64)
    out = VPDenoiser(ClassConditionalUNet(unet, [0, 1, 2]), ABAR)(x, sigma)
    for i in range(3):
        alone = VPDenoiser(ClassConditionalUNet(unet, [i]), ABAR)(x[i : i + 1], sigma[:1])
        torch.testing.assert_close(out[i : i + 1], alone, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out[0], VPDenoiser(ClassConditionalUNet(unet, [1]), ABAR)(x[:1], sigma[:1])[0])
    cycled = VPDenoiser(ClassConditionalUNet(unet, [0, 1, 2]), ABAR)(torch.cat([x, x]), torch.cat([sigma, sigma]))
    torch.testing.assert_close(cycled, torch.cat([out, out]), rtol=1e-12, atol=1e-12)


def test_class_guidance_combines_the_null_and_label_branches():
    unet = tiny_class_unet(out_channels=2)  # with learned variance too: guidance acts on the eps half
    x, t = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([400.0, 400.0], dtype=torch.float64)
    guided = ClassConditionalUNet(unet, [2, 0], guidance_scale=4.0, null_class=3)(x, t)
    cond = unet(x, t, class_labels=torch.tensor([2, 0])).sample
    null = unet(x, t, class_labels=torch.tensor([3, 3])).sample
    torch.testing.assert_close(guided, null + 4.0 * (cond - null), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="needs null_class"):
        ClassConditionalUNet(unet, [0], guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"in 0\.\.3"):
        ClassConditionalUNet(unet, [4])
    with pytest.raises(ValueError, match="integers"):
        ClassConditionalUNet(unet, [0.5])
    with pytest.raises(ValueError, match="multiple of 2"):
        ClassConditionalUNet(unet, [0, 1])(torch.cat([x, x[:1]]), torch.cat([t, t[:1]]))


def test_dode_pipeline_samples_class_conditional_learned_variance_unets():
    """DODEPipeline(class_labels, guidance) == dode.sample on the same adapter (float64, rounding only)."""
    from dode.integrations.diffusers.pipeline import DODEPipeline
    from dode.integrations.diffusers.scheduler import DODEScheduler

    unet, ddpm = tiny_class_unet(out_channels=2), DDPMScheduler(beta_schedule="linear")
    lam = [0.2, -0.1, 0.3, 0.1]
    sched = DODEScheduler.from_scheduler(ddpm, solver="dpmpp_2m", nfe=4, lambdas=lam)
    pipe = DODEPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    x_T = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = pipe(batch_size=3, latents=x_T, class_labels=[0, 1, 2], guidance_scale=3.0, null_class=3,
               output_type="latent").images
    den = VPDenoiser(ClassConditionalUNet(unet, [0, 1, 2], guidance_scale=3.0, null_class=3), ABAR)
    ref = dode.sample(den, x_T, sched.sigmas, "dpmpp_2m", dode.Lambdas(lam, "dpmpp_2m", sched.sigmas.tolist()))
    assert (out - ref).abs().max() <= 1e-10 * ref.abs().max()
    with pytest.raises(ValueError, match="pass class_labels"):
        pipe(batch_size=1, output_type="latent")


def test_from_pretrained_class_conditional_needs_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    DDPMPipeline(unet=tiny_class_unet().to(torch.float32), scheduler=DDPMScheduler()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="class-conditional: pass class_labels"):
        VPDenoiser.from_pretrained(str(tmp_path))
    den = VPDenoiser.from_pretrained(str(tmp_path), class_labels=[1, 2], guidance_scale=2.0, null_class=3)
    x0 = dode.sample(den, torch.randn(2, 1, 8, 8), dode.vp_sigmas(ABAR, 3), "euler")
    assert x0.shape == (2, 1, 8, 8) and torch.isfinite(x0).all()
