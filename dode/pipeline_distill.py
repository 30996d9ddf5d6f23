"""D-ODE for text-conditioned latent pipelines (the Stable Diffusion family), with classifier-free guidance.

The pipeline's UNet, prompts and guidance become one sigma-space denoiser (``GuidedUNet`` inside the
project's ``VPDenoiser``); ``dode.distill`` fits lambdas on it; ``DODEScheduler.from_scheduler``
ships them back into the pipeline:

    lam = distill_pipeline(pipe, prompts, solver="euler", nfe=8, guidance_scale=7.5)
    pipe.scheduler = DODEScheduler.from_scheduler(pipe.scheduler, lambdas=lam)
    images = pipe(prompt, num_inference_steps=pipe.scheduler.num_inference_steps, guidance_scale=7.5).images
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .correction import Lambdas
from .distill import distill
from .grids import GridSpec
from .models.vp import VPDenoiser
from .types import Tensor


class GuidedUNet:
    """A text-conditioned UNet with classifier-free guidance (Ho & Salimans, 2022) as one model eps(x_vp, t).

    eps = eps_u + g (eps_c - eps_u), both halves from one batched call on [x, x] with
    [uncond, cond] embeddings, exactly as diffusers' text-to-image pipelines do (``guidance_scale``
    g <= 1: the conditional output alone). Row i of the input uses prompt i mod P, so any batch whose
    split points are multiples of P (the distiller's fit and held-out parts) keeps its prompts.
    """

    def __init__(
        self, unet: Any, cond: Tensor, uncond: Tensor | None = None, guidance_scale: float = 1.0
    ) -> None:
        if getattr(unet.config, "time_cond_proj_dim", None) is not None:
            raise ValueError(
                "this UNet takes a guidance embedding (time_cond_proj_dim); GuidedUNet needs plain CFG"
            )
        self.unet, self.cond, self.uncond, self.guidance_scale = unet, cond, uncond, float(guidance_scale)

    def parameters(self):  # the dtype and device VPDenoiser casts inputs to
        return self.unet.parameters()

    def _rows(self, embeds: Tensor, n: int) -> Tensor:
        if n % len(embeds):
            raise ValueError(
                f"a batch of {n} rows does not cycle through {len(embeds)} prompts; "
                f"use a multiple of {len(embeds)}"
            )
        return embeds.repeat(n // len(embeds), *([1] * (embeds.ndim - 1)))

    def __call__(self, x_vp: Tensor, t: Tensor) -> Tensor:
        cond = self._rows(self.cond, len(x_vp))
        if self.uncond is None:
            return self.unet(x_vp, t, encoder_hidden_states=cond).sample
        embeds = torch.cat([self._rows(self.uncond, len(x_vp)), cond])
        out = self.unet(torch.cat([x_vp, x_vp]), torch.cat([t, t]), encoder_hidden_states=embeds).sample
        eps_u, eps_c = out.chunk(2)
        return eps_u + self.guidance_scale * (eps_c - eps_u)


def pipeline_denoiser(
    pipe: Any, prompts: Sequence[str], *, guidance_scale: float = 7.5, negative_prompt: str | None = None
) -> VPDenoiser:
    """The sigma-space denoiser of a text-to-image pipeline for ``prompts`` (row i -> prompt i mod P).

    Prompts are encoded with the pipeline's own ``encode_prompt``; the empty prompt (or
    ``negative_prompt``) is the unconditional branch, as in the pipeline itself.
    """
    for part in ("unet", "scheduler", "encode_prompt"):
        if not hasattr(pipe, part):
            raise ValueError(
                f"{type(pipe).__name__} has no {part}; "
                "pass a text-to-image latent pipeline (Stable Diffusion family)"
            )
    if not hasattr(pipe.scheduler, "alphas_cumprod"):
        raise ValueError("the pipeline's scheduler has no DDPM training schedule (alphas_cumprod)")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("pass at least one prompt (a list of strings)")
    guided = guidance_scale > 1.0
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(
            prompts,
            pipe.device,
            1,
            guided,
            None if negative_prompt is None else [negative_prompt] * len(prompts),
        )
    model = GuidedUNet(pipe.unet, cond, uncond if guided else None, guidance_scale)
    return VPDenoiser(model, pipe.scheduler.alphas_cumprod, pipe.scheduler.config.prediction_type)


def latent_shape(pipe: Any) -> tuple[int, ...]:
    """One latent's shape (C, H, W) from the pipeline's UNet config."""
    size = pipe.unet.config.sample_size
    return (pipe.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))


def distill_pipeline(
    pipe: Any,
    prompts: Sequence[str],
    *,
    solver: str = "euler",
    nfe: int = 10,
    grid: str = "karras",
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    samples_per_prompt: int = 4,
    teacher_factor: int = 10,
    seed: int = 0,
    correction: str = "data",
    alignment: str = "exact",
    guard: bool = True,
) -> Lambdas:
    """Fit D-ODE lambdas for ``pipe`` over ``prompts`` x ``samples_per_prompt`` seeded latents.

    Noise row i belongs to prompt i mod P. With ``guard`` a quarter of each prompt's samples (at least
    one) is held out, so fit and held-out batches both cycle through all prompts.
    """
    if samples_per_prompt < (2 if guard else 1):
        raise ValueError(
            f"samples_per_prompt must be >= {2 if guard else 1} (the guard holds samples out), "
            f"got {samples_per_prompt}"
        )
    den = pipeline_denoiser(pipe, prompts, guidance_scale=guidance_scale, negative_prompt=negative_prompt)
    sigmas = GridSpec.for_nfe(grid, solver, nfe).sigmas(den)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(
        (len(prompts) * samples_per_prompt, *latent_shape(pipe)), generator=gen, dtype=torch.float64
    )
    held = max(1, round(samples_per_prompt / 4))
    return distill(
        den,
        noise.to(pipe.device),
        sigmas,
        solver,
        teacher_factor,
        alignment,
        guard,
        correction,
        holdout=held / samples_per_prompt,
    )


__all__ = ["GuidedUNet", "distill_pipeline", "latent_shape", "pipeline_denoiser"]
