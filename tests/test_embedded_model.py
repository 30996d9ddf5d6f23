"""The embedded digits DDPM and the FD-digits classifier: offline loading, accuracy, samples, training."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from pytorch_fid.fid_score import calculate_frechet_distance

from dode.cli import main
from dode.metrics.digits import (
    CLASSIFIER_DIR,
    classifier_accuracy,
    digits_features,
    digits_split,
    fd_digits,
    load_digits_classifier,
    load_digits_images,
)
from dode.models import EMBEDDED_MODEL_DIR, VPDenoiser, load_model
from dode.training.digits import UNET_CONFIG, sample_digits, train_digits_model

FD_THRESHOLD = 200.0  # 128 samples, 50 Euler steps vs all digits: model ~40-90, 128 real digits ~40-55


@pytest.fixture(scope="module")
def model():
    return load_model("digits-ddpm")


@pytest.fixture(autouse=True)
def one_thread():
    """8x8 batches gain nothing from a second thread, and lose up to 5x when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def folder_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_embedded_model_loads_offline_as_a_linear_beta_epsilon_ddpm(model):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    den = model.denoiser
    assert isinstance(den, VPDenoiser) and den.prediction_type == "epsilon" and model.shape == (1, 8, 8)
    # DDPM (Ho et al., 2020): beta linear from 1e-4 to 0.02 over T = 1000, sigma_t^2 = (1 - abar_t) / abar_t.
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(den.sigmas_train, ((1 - abar) / abar).sqrt(), rtol=1e-4, atol=0)
    assert 0.5e6 <= sum(p.numel() for p in den.model.parameters()) <= 1.5e6
    assert (EMBEDDED_MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert folder_bytes(EMBEDDED_MODEL_DIR) <= 5e6


def test_classifier_held_out_accuracy_is_at_least_97_percent():
    config = json.loads((CLASSIFIER_DIR / "config.json").read_text())
    classifier = load_digits_classifier()
    images, labels = load_digits_images()
    train, test = digits_split(len(images), config["test_fraction"], config["split_seed"])
    assert len(train) + len(test) == len(images) == 1797 and not set(train.tolist()) & set(test.tolist())
    accuracy = classifier_accuracy(classifier, images[test], labels[test])
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(config["test_accuracy"], abs=1e-9)
    assert folder_bytes(CLASSIFIER_DIR) <= 1e6
    features = digits_features(images[:5])
    assert features.dtype == torch.float64 and features.shape == (5, config["feature_dim"])
    torch.testing.assert_close(features, classifier.features(images[:5]).double())


def test_fd_digits_is_the_frechet_distance_of_the_classifier_features():
    images, _ = load_digits_images()
    a, b = images[:300], images[300:700]
    fa, fb = digits_features(a).numpy(), digits_features(b).numpy()
    direct = calculate_frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    assert fd_digits(a, b) == pytest.approx(direct, rel=1e-6)
    assert fd_digits(a, a) == pytest.approx(0.0, abs=1e-6)


def test_many_step_samples_score_near_the_data_and_far_from_noise_or_an_untrained_net(model):
    images, _ = load_digits_images()
    torch.manual_seed(0)
    untrained = VPDenoiser(UNet2DModel(**UNET_CONFIG).eval(), 1 / (1 + model.denoiser.sigmas_train**2))
    noise = torch.rand((128, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    fd_model = fd_digits(sample_digits(model.denoiser, 128, steps=50, seed=1), images)
    fd_untrained = fd_digits(sample_digits(untrained, 128, steps=50, seed=1), images)
    fd_noise = fd_digits(noise, images)
    assert fd_model < FD_THRESHOLD < min(fd_untrained, fd_noise) / 4, (fd_model, fd_untrained, fd_noise)


def test_train_model_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train-model", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--only", "--steps", "--out", "--grid-dir"))


def test_train_model_rejects_bad_input(capsys):
    assert main(["train-model", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-model", "--only", "unet"])


def test_train_model_smoke_writes_loadable_reproducible_folders(tmp_path, capsys):
    args = ["--steps", "5", "--classifier-steps", "5", "--samples", "16", "--sample-steps", "3"]
    assert main(["train-model", *args, "--out", str(tmp_path)]) == 0
    assert "FD-digits" in capsys.readouterr().out
    trained = load_model(str(tmp_path / "digits-ddpm"))
    assert trained.shape == (1, 8, 8) and trained.denoiser.prediction_type == "epsilon"
    assert load_digits_classifier(tmp_path / "digits-classifier").features(torch.zeros(2, 1, 8, 8)).shape == (
        2,
        64,
    )
    # Same seed, same thread count -> the same weights.
    train_digits_model(tmp_path / "again", steps=5, seed=0, log=lambda line: None)
    assert load_model(str(tmp_path / "again")).fingerprint == trained.fingerprint
