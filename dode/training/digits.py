"""Training the embedded models on scikit-learn's 8x8 digits: a DDPM epsilon-model, its flow-matching twin
and the FD classifier.

The diffusion model is the DDPM family (Ho et al., 2020) shrunk to 8x8: a diffusers ``UNet2DModel``
trained with L_simple = E_{t, x0, eps} ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2
(eq. 14) on the linear beta schedule 1e-4..0.02, T = 1000, with an EMA of the weights, and saved as a
``DDPMPipeline`` folder. digits-flow is the same UNet trained for flow matching (``flow_objective``).
Seeded and deterministic on CPU as far as torch allows.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dode.common.images import to_uint8
from dode.core.types import Tensor
from dode.metrics.classifier import batches, check_counts, deterministic, fit_classifier, warmup_cosine
from dode.metrics.digits import (
    DigitsClassifier,
    classifier_accuracy,
    digits_split,
    fd_digits,
    load_digits_images,
    save_digits_classifier,
)
from dode.models.flow import FlowDenoiser
from dode.models.vp import VPDenoiser

UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D",) * 3,
    "up_block_types": ("UpBlock2D",) * 3,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}
FLOW_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 1.0}
Log = Callable[[str], None]
Loss = Callable[[Any, Tensor, torch.Generator], Tensor]  # (unet, x0 batch, generator) -> training loss


def epsilon_objective() -> tuple[Any, Loss]:
    """DDPM's L_simple (Ho et al., 2020, eq. 14) on the linear beta schedule: noise x0 at a uniform
    timestep t, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and regress eps; with its DDPMScheduler."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    abar = scheduler.alphas_cumprod.to(torch.float32)

    def loss(unet: Any, x0: Tensor, gen: torch.Generator) -> Tensor:
        t = torch.randint(0, len(abar), (len(x0),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        return F.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t).sample, eps)

    return scheduler, loss


def flow_objective() -> tuple[Any, Loss]:
    """Flow matching (rectified flow; Lipman et al., 2023; Liu et al., 2023): x_t = (1 - t) x0 + t eps with
    t ~ U(0, 1), regress the velocity v = eps - x0 from unet(x_t, T t), the timestep convention of its
    FlowMatchEulerDiscreteScheduler (shift 1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULER_CONFIG)
    scale = scheduler.config.num_train_timesteps

    def loss(unet: Any, x0: Tensor, gen: torch.Generator) -> Tensor:
        t = torch.rand((len(x0),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        tb = t.view(-1, 1, 1, 1)
        return F.mse_loss(unet((1 - tb) * x0 + tb * eps, t * scale).sample, eps - x0)

    return scheduler, loss


TRAINING_OBJECTIVES: dict[str, Callable[[], tuple[Any, Loss]]] = {"epsilon": epsilon_objective, "flow": flow_objective}


def train_digits_model(
    out: str | Path,
    *,
    objective: str = "epsilon",
    steps: int = 4000,
    batch: int = 128,
    lr: float = 5e-4,
    ema_decay: float = 0.999,
    seed: int = 0,
    log: Log = print,
) -> dict:
    """Train ``UNet2DModel(**UNET_CONFIG)`` on all 1797 digits with ``objective`` (``TRAINING_OBJECTIVES``:
    "epsilon" makes digits-ddpm, "flow" digits-flow); save its EMA (decay warm-up (1 + step) / (10 + step))
    at ``out`` as a DDPMPipeline folder with the objective's scheduler. For "flow" that is a
    FlowMatchEulerDiscreteScheduler, and the stock DDPMPipeline loop is then flow-matching Euler."""
    from diffusers import DDPMPipeline, UNet2DModel

    if objective not in TRAINING_OBJECTIVES:
        raise ValueError(f"unknown training objective {objective!r}; choose one of {list(TRAINING_OBJECTIVES)}")
    check_counts("train_digits_model", steps=steps, batch=batch)
    if not (lr > 0 and 0 <= ema_decay < 1):
        raise ValueError(f"train_digits_model needs lr > 0 and 0 <= ema_decay < 1, got lr={lr}, ema_decay={ema_decay}")
    scheduler, loss_of = TRAINING_OBJECTIVES[objective]()
    images, _ = load_digits_images()
    losses, start = [], time.perf_counter()
    with deterministic(seed) as gen:
        unet = UNet2DModel(**UNET_CONFIG)
        ema = copy.deepcopy(unet).requires_grad_(False)
        opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
        lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, min(200, steps // 10 + 1)))
        order = batches(len(images), batch, gen)
        for step in range(steps):
            loss = loss_of(unet, images[next(order)], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr_sched.step()
            # EMA of the weights, with the usual warm-up of the decay.
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), unet.parameters()):
                    p_ema.lerp_(p, 1 - decay)
            losses.append(loss.item())
            if (step + 1) % 500 == 0 or step + 1 == steps:
                log(
                    f"model step {step + 1}/{steps}: loss {sum(losses[-500:]) / len(losses[-500:]):.4f} "
                    f"({time.perf_counter() - start:.0f} s)"
                )
    DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(str(out), safe_serialization=True)
    tail = losses[-500:]
    return {
        "params": sum(p.numel() for p in unet.parameters()),
        "final_loss": sum(tail) / len(tail),
        "seconds": time.perf_counter() - start,
        "steps": steps,
    }


def train_digits_classifier(
    out: str | Path,
    *,
    steps: int = 2000,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    split_seed: int = 0,
    test_fraction: float = 0.25,
) -> dict:
    """Train the FD-digits classifier on the training split; save it at ``out`` with its held-out accuracy."""
    check_counts("train_digits_classifier", steps=steps, batch=batch)
    if not (lr > 0 and 0 < test_fraction < 1):
        raise ValueError(f"train_digits_classifier needs lr > 0 and 0 < test_fraction < 1, got {lr}, {test_fraction}")
    images, labels = load_digits_images()
    train, test = digits_split(len(images), test_fraction, split_seed)
    start = time.perf_counter()
    with deterministic(seed) as gen:
        model = DigitsClassifier()
        loss = fit_classifier(model, images, labels, train, gen, steps=steps, batch=batch, lr=lr, weight_decay=1e-4,
                              warmup=min(100, steps // 10 + 1))
    model.eval()
    accuracy = classifier_accuracy(model, images[test], labels[test])
    save_digits_classifier(
        model, out, split_seed=split_seed, test_fraction=test_fraction, test_accuracy=accuracy
    )
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "accuracy": accuracy,
        "seconds": time.perf_counter() - start,
        "final_loss": loss.item(),
    }


def sample_digits(
    denoiser: VPDenoiser | FlowDenoiser, n: int, *, steps: int = 100, seed: int = 0, batch: int = 500
) -> Tensor:
    """``n`` samples by Euler (= DDIM) on the time-uniform VP grid (a flow-matching model: its default grid,
    the stock FlowMatchEulerDiscreteScheduler's), clamped to [-1, 1], (n, 1, 8, 8)."""
    check_counts("sample_digits", n=n, steps=steps, batch=batch)
    from dode.core.sampling import sample
    from dode.core.schedules import vp_sigmas

    if hasattr(denoiser, "flow_sigmas"):  # a flow-matching model: its own grid, uniform in t for shift 1
        sigmas = denoiser.flow_sigmas(steps)
    else:
        alphas_cumprod = 1 / (1 + denoiser.sigmas_train**2)  # sigma_t^2 = (1 - abar_t) / abar_t
        sigmas = vp_sigmas(alphas_cumprod, steps, "time_uniform")
    noise = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        out = [sample(denoiser, b, sigmas, "euler") for b in noise.split(batch)]
    return torch.cat(out).clamp(-1, 1).to(torch.float32)


def evaluate_digits_model(
    denoiser: VPDenoiser | FlowDenoiser, classifier: DigitsClassifier, n: int, *, steps: int = 100, seed: int = 0
) -> dict:
    """FD-digits of ``n`` model samples against one half of the digits, with two yardsticks against the same
    half: the other half of the data (the floor at this sample size) and ``n`` uniform-noise images."""
    images, _ = load_digits_images()
    half_a, half_b = digits_split(len(images), 0.5, seed)
    reference = images[half_b]
    noise = torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    samples = sample_digits(denoiser, n, steps=steps, seed=seed)
    return {
        "samples": samples,
        "fd_model": fd_digits(samples, reference, classifier),
        "fd_data_halves": fd_digits(images[half_a], reference, classifier),
        "fd_noise": fd_digits(noise, reference, classifier),
    }


def save_grid(images: Tensor, path: str | Path, *, nrow: int = 8, scale: int = 6, pad: int = 2) -> Path:
    """Write images in [-1, 1], (N, 1, H, W), as one grayscale PNG grid (``scale`` x nearest upsampling)."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = math.ceil(n / nrow)
    cell_h, cell_w = h * scale + pad, w * scale + pad
    canvas = np.zeros((rows * cell_h + pad, nrow * cell_w + pad), dtype=np.uint8)
    for i, img in enumerate(to_uint8(images)[:, 0].repeat(scale, 1).repeat(scale, 2)):
        top, left = pad + (i // nrow) * cell_h, pad + (i % nrow) * cell_w
        canvas[top : top + h * scale, left : left + w * scale] = img
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
