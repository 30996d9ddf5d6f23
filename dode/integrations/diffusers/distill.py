"""D-ODE for text-conditioned latent pipelines, with their guidance: the Stable Diffusion family (UNets on DDPM
schedules) and the flow-matching transformers (Stable Diffusion 3, FLUX).

The pipeline's network, prompts (SDXL: with pooled embeddings and time ids; SD3 and FLUX: pooled projections) and
guidance become one sigma-space denoiser (``GuidedUNet`` inside the project's ``VPDenoiser``, or
``GuidedNetwork`` on the transformer inside ``FlowDenoiser``); ``dode.distill`` fits lambdas on it;
``DODEScheduler.from_scheduler`` ships them back into the pipeline:

    lam = distill_pipeline(pipe, prompts, solver="euler", nfe=8, guidance_scale=7.5)
    pipe.scheduler = DODEScheduler.from_scheduler(pipe.scheduler, lambdas=lam)
    images = pipe(prompt, num_inference_steps=pipe.scheduler.num_inference_steps, guidance_scale=7.5).images
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import Field, model_validator

from dode.common.config import Config, Int, Number, build
from dode.core.correction import Lambdas
from dode.core.grids import GridSpec
from dode.core.types import Tensor
from dode.distillation.config import FAMILY, STUDENT_SOLVER, Family, FitConfig, Seed, Solver
from dode.distillation.fit import distill
from dode.distillation.teacher import TeacherConfig
from dode.models.flow import FlowDenoiser, FlowSchedule, check_flow_start, flux_call, is_flow_config, sd3_call
from dode.models.vp import VPDenoiser, cycle_rows
from dode.store.lambdas import save_lambdas
from dode.store.registry import Artifact, Registry


class PipelineDistillConfig(Config):
    """How ``distill_pipeline`` (and ``dode distill-pipeline``) fits lambdas for a text-to-image pipeline: the
    student (``solver`` at ``nfe`` evaluations on a ``family`` grid), the guidance, ``samples_per_prompt``
    seeded latents per prompt from ``seed``, the teacher (its ``factor``, alignment and solver; its seeds are
    the latents') and the fit."""

    solver: Solver = Field(STUDENT_SOLVER, description="base solver")
    nfe: Int = Field(10, ge=1, le=100_000, description="network evaluations of the student (heun: odd)")
    family: Family | None = Field(None, description=f"student grid family (default: {FAMILY}; flow for "
                                  "flow-matching pipelines such as SD3, FLUX)")
    height: Int | None = Field(None, ge=8, le=16_384, description="image height in pixels for flow-matching "
                               "pipelines (SD3, FLUX; default: the pipeline's)")
    width: Int | None = Field(None, ge=8, le=16_384, description="image width in pixels, as height")
    guidance_scale: Number = Field(7.5, description="classifier-free guidance scale (<= 1: off)")
    negative_prompt: str | None = Field(None, description="unconditional branch text (default: empty prompt)")
    samples_per_prompt: Int = Field(4, ge=1, le=100_000, description="seeded latents per prompt to fit on")
    seed: Seed = Field(0, description="seed of the first latent")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    fit: FitConfig = Field(default_factory=FitConfig)

    @model_validator(mode="after")
    def _fit(self) -> PipelineDistillConfig:
        if self.samples_per_prompt < (2 if self.fit.guard else 1):
            raise ValueError(f"samples_per_prompt must be >= {2 if self.fit.guard else 1} (the guard holds samples "
                             f"out), got {self.samples_per_prompt}")
        self.teacher.check_budget(self.grid.steps)
        return self

    @property
    def grid(self) -> GridSpec:
        """The student grid on which the solver makes ``nfe`` evaluations (a UNet pipeline's default family)."""
        return GridSpec.for_nfe(self.family or FAMILY, self.solver, self.nfe)

    def grid_for(self, flow: bool) -> GridSpec:
        """The student grid of a flow-matching (``flow``) or a UNet pipeline: ``family``, else its default."""
        return GridSpec.for_nfe(self.family or ("flow" if flow else FAMILY), self.solver, self.nfe)


def _stack(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two branches' UNet keyword arguments as one batch, [first; second] row-wise (nested dicts too)."""
    return {
        k: _stack(v, second[k]) if isinstance(v, dict) else torch.cat([v, second[k]])
        for k, v in first.items()
    }


class GuidedUNet:
    """A text-conditioned UNet with classifier-free guidance (Ho & Salimans, 2022) as one model eps(x_vp, t).

    eps = eps_u + g (eps_c - eps_u), both halves from one batched call on [x, x] with
    [uncond, cond] embeddings, exactly as diffusers' text-to-image pipelines do (``guidance_scale``
    g <= 1: the conditional output alone). ``added``/``added_uncond`` are SDXL's added conditioning
    (``added_cond_kwargs``: pooled ``text_embeds`` and micro-conditioning ``time_ids``), one row per
    prompt like the embeddings. Row i of the input uses prompt i mod P, so any batch whose split points
    are multiples of P (the distiller's fit and held-out parts) keeps its prompts.
    """

    def __init__(
        self,
        unet: Any,
        cond: Tensor,
        uncond: Tensor | None = None,
        guidance_scale: float = 1.0,
        added: dict[str, Tensor] | None = None,
        added_uncond: dict[str, Tensor] | None = None,
    ) -> None:
        if getattr(unet.config, "time_cond_proj_dim", None) is not None:
            raise ValueError(
                "this UNet takes a guidance embedding (time_cond_proj_dim); GuidedUNet needs plain CFG"
            )
        if added is not None and uncond is not None and added_uncond is None:
            raise ValueError(
                "with guidance, pass the added conditioning of both branches (added= and added_uncond=)"
            )
        self.unet, self.cond, self.uncond, self.guidance_scale = unet, cond, uncond, float(guidance_scale)
        self.added, self.added_uncond = added, added_uncond

    def parameters(self):  # the dtype and device VPDenoiser casts inputs to
        return self.unet.parameters()

    def _branch(self, embeds: Tensor, added: dict[str, Tensor] | None, n: int) -> dict[str, Any]:
        """The UNet keyword arguments of one branch for n rows (row i: prompt i mod P)."""
        kwargs: dict[str, Any] = {"encoder_hidden_states": cycle_rows(embeds, n)}
        if added is not None:
            kwargs["added_cond_kwargs"] = {key: cycle_rows(value, n) for key, value in added.items()}
        return kwargs

    def __call__(self, x_vp: Tensor, t: Tensor) -> Tensor:
        cond = self._branch(self.cond, self.added, len(x_vp))
        if self.uncond is None:
            return self.unet(x_vp, t, **cond).sample
        both = _stack(self._branch(self.uncond, self.added_uncond, len(x_vp)), cond)
        out = self.unet(torch.cat([x_vp, x_vp]), torch.cat([t, t]), **both).sample
        eps_u, eps_c = out.chunk(2)
        return eps_u + self.guidance_scale * (eps_c - eps_u)


class GuidedNetwork:
    """Any network ``call(x, t, **conditioning)`` with classifier-free guidance as one model(x, t): the conditioning
    is one row per prompt (nested dicts too), row i of a batch takes prompt i mod P; with ``uncond``, one batched
    call on [x, x] with [uncond, cond] and out = out_u + g (out_c - out_u), as SD3's pipeline does."""

    def __init__(self, call: Any, cond: dict[str, Any], uncond: dict[str, Any] | None = None,
                 guidance_scale: float = 1.0) -> None:
        self.call, self.cond, self.uncond, self.guidance_scale = call, cond, uncond, float(guidance_scale)
        self.parameters = call.parameters  # the dtype and device the adapter casts inputs to

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        cond = _cycle(self.cond, len(x))
        if self.uncond is None:
            return self.call(x, t, **cond)
        both = _stack(_cycle(self.uncond, len(x)), cond)
        out_u, out_c = self.call(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        return out_u + self.guidance_scale * (out_c - out_u)


def _cycle(kwargs: dict[str, Any], n: int) -> dict[str, Any]:
    """Every tensor of ``kwargs`` (nested dicts too) cycled to n rows."""
    return {k: _cycle(v, n) if isinstance(v, dict) else cycle_rows(v, n) for k, v in kwargs.items()}


def flow_latent_shape(pipe: Any, height: int | None, width: int | None) -> tuple[tuple[int, ...], int]:
    """One latent's shape (C, H, W) and the image sequence length dynamic shifting counts, for an SD3- or FLUX-style
    pipeline at ``height`` x ``width`` pixels (its default size when None), as the pipeline computes them."""
    net, flux = pipe.transformer, hasattr(pipe.transformer.config, "guidance_embeds")
    height = height or pipe.default_sample_size * pipe.vae_scale_factor
    width = width or pipe.default_sample_size * pipe.vae_scale_factor
    if flux:  # FLUX packs 2 x 2 patches of 16 / 4 channels
        h, w = (2 * (int(side) // (pipe.vae_scale_factor * 2)) for side in (height, width))
        return (net.config.in_channels // 4, h, w), (h // 2) * (w // 2)
    h, w = (int(side) // pipe.vae_scale_factor for side in (height, width))
    return (net.config.in_channels, h, w), (h // net.config.patch_size) * (w // net.config.patch_size)


def flow_pipeline_denoiser(pipe: Any, prompts: Sequence[str], *, guidance_scale: float, negative_prompt: str | None,
                           height: int | None = None, width: int | None = None,
                           max_sequence_length: int | None = None) -> tuple[FlowDenoiser, tuple[int, ...]]:
    """The sigma-space denoiser of an SD3- or FLUX-style pipeline for ``prompts`` (row i -> prompt i mod P) and
    one latent's shape. SD3: classifier-free guidance over the pipeline's own ``encode_prompt`` (the empty prompt,
    or ``negative_prompt``, unconditional); FLUX: the guidance embedding (``guidance_embeds``) and no second branch,
    as FluxPipeline's default call. The dynamic shift ``mu`` is the pipeline's at that size."""
    flux = hasattr(pipe.transformer.config, "guidance_embeds")
    guided = guidance_scale > 1.0 and not flux
    lengths = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    with torch.no_grad():
        if flux:
            embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=pipe.device, **lengths)
        else:
            embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=pipe.device, do_classifier_free_guidance=guided,
                negative_prompt=None if negative_prompt is None else [negative_prompt] * len(prompts), **lengths)
    shape, seq_len = flow_latent_shape(pipe, height, width)
    cond = {"encoder_hidden_states": embeds, "pooled_projections": pooled}
    if flux:
        call, shared = flux_call(pipe.transformer), {"txt_ids": text_ids}
        embedded = pipe.transformer.config.guidance_embeds

        def network(x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
            g = torch.full((len(x),), guidance_scale, device=x.device, dtype=torch.float32) if embedded else None
            return call(x, t, guidance=g, **shared, **kwargs)

        network.parameters = call.parameters
        model = GuidedNetwork(network, cond)
    else:
        uncond = {"encoder_hidden_states": neg, "pooled_projections": neg_pooled} if guided else None
        model = GuidedNetwork(sd3_call(pipe.transformer), cond, uncond, guidance_scale)
    schedule = FlowSchedule.from_config(pipe.scheduler.config)
    return FlowDenoiser(model, schedule, mu=schedule.mu(seq_len) if schedule.use_dynamic_shifting else None), shape


def sdxl_added_conditioning(
    pipe: Any, pooled: Tensor, pooled_uncond: Tensor | None
) -> tuple[dict, dict | None]:
    """SDXL's added conditioning per prompt: pooled text embeddings and the micro-conditioning time ids
    (original size, crop top-left, target size; Podell et al., 2023, Sec. 2.2) of the pipeline's
    default call: the default image size, no crop, for both branches."""
    if getattr(pipe.config, "requires_aesthetics_score", False):
        raise ValueError(
            "this SDXL pipeline conditions on an aesthetic score (a refiner); distil with the base "
            "text-to-image pipeline (StableDiffusionXLPipeline)"
        )
    size = [s * pipe.vae_scale_factor for s in latent_shape(pipe)[1:]]
    time_ids = torch.tensor([[*size, 0, 0, *size]], dtype=pooled.dtype, device=pooled.device).repeat(
        len(pooled), 1
    )
    added = {"text_embeds": pooled, "time_ids": time_ids}
    return added, None if pooled_uncond is None else {"text_embeds": pooled_uncond, "time_ids": time_ids}


def pipeline_denoiser(
    pipe: Any, prompts: Sequence[str], *, guidance_scale: float = 7.5, negative_prompt: str | None = None
) -> VPDenoiser:
    """The sigma-space denoiser of a text-to-image pipeline for ``prompts`` (row i -> prompt i mod P).

    Prompts are encoded with the pipeline's own ``encode_prompt``; the empty prompt (or
    ``negative_prompt``) is the unconditional branch, as in the pipeline itself. SDXL-style pipelines
    (two text encoders; ``encode_prompt`` returns pooled embeddings too) add their pooled embeddings
    and time ids (``sdxl_added_conditioning``).
    """
    for part in ("unet", "scheduler", "encode_prompt"):
        if not hasattr(pipe, part):
            raise ValueError(
                f"{type(pipe).__name__} has no {part}; "
                "pass a text-to-image latent pipeline (Stable Diffusion family)"
            )
    if not hasattr(pipe.scheduler, "alphas_cumprod"):
        raise ValueError("the pipeline's scheduler has no DDPM training schedule (alphas_cumprod)")
    prompts = _prompts(prompts)
    guided = guidance_scale > 1.0
    with torch.no_grad():
        encoded = pipe.encode_prompt(
            prompt=prompts,
            device=pipe.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guided,
            negative_prompt=None if negative_prompt is None else [negative_prompt] * len(prompts),
        )
    cond, uncond = encoded[0], encoded[1] if guided else None
    added = added_uncond = None
    if len(encoded) == 4:  # SDXL: (embeds, negative embeds, pooled, negative pooled)
        added, added_uncond = sdxl_added_conditioning(pipe, encoded[2], encoded[3] if guided else None)
    model = GuidedUNet(pipe.unet, cond, uncond, guidance_scale, added, added_uncond)
    return VPDenoiser(model, pipe.scheduler.alphas_cumprod, pipe.scheduler.config.prediction_type)


def _prompts(prompts: Sequence[str]) -> list[str]:
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("pass at least one prompt (a list of strings)")
    return prompts


def latent_shape(pipe: Any) -> tuple[int, ...]:
    """One latent's shape (C, H, W) from the pipeline's UNet config."""
    size = pipe.unet.config.sample_size
    return (pipe.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))


def distill_pipeline(pipe: Any, prompts: Sequence[str], config: PipelineDistillConfig | Mapping[str, Any] | None = None,
                     **fields: Any) -> Lambdas:
    """Fit D-ODE lambdas for ``pipe`` over ``prompts`` x ``samples_per_prompt`` seeded latents as ``config``
    (``PipelineDistillConfig``, or a mapping of its fields; ``fields`` override it) says: the teacher and the
    fit as ``dode.distill`` (the noise is the seeded latents here).

    Noise row i belongs to prompt i mod P. With the guard a quarter of each prompt's samples (at least
    one) is held out (``fit.holdout`` is set so), so fit and held-out batches both cycle through all
    prompts. A learned grid (objective ``final``): ``DODEScheduler.from_scheduler(pipe.scheduler,
    lambdas=lam)`` then samples on ``lam.sigmas``. SD-1.x/2.x and SDXL pipelines alike (``grid`` default "karras"),
    and the flow-matching SD3 and FLUX pipelines (a ``transformer`` and a FlowMatchEulerDiscreteScheduler; ``grid``
    default "flow", the scheduler's shifted grid, from t = 1 where the pipelines' noise is; ``height``/``width``
    the image size in pixels, the pipeline's default when None, which sets the latents and FLUX's shift).
    """
    given = config.model_dump(exclude_unset=True) if isinstance(config, PipelineDistillConfig) else dict(config or {})
    c = build(PipelineDistillConfig, {**given, **fields})
    if hasattr(pipe, "transformer") and is_flow_config(pipe.scheduler.config):
        den, shape = flow_pipeline_denoiser(pipe, _prompts(prompts), guidance_scale=c.guidance_scale,
                                            negative_prompt=c.negative_prompt, height=c.height, width=c.width)
    else:
        if c.height is not None or c.width is not None:
            raise ValueError("height and width apply to flow-matching (SD3, FLUX) pipelines; a UNet pipeline "
                             "distils at its UNet's sample_size")
        den = pipeline_denoiser(pipe, prompts, guidance_scale=c.guidance_scale, negative_prompt=c.negative_prompt)
        shape = latent_shape(pipe)
    sigmas = c.grid_for(isinstance(den, FlowDenoiser)).sigmas(den)
    if isinstance(den, FlowDenoiser):
        check_flow_start(c.solver, sigmas)
    gen = torch.Generator().manual_seed(c.seed)
    noise = torch.randn((len(prompts) * c.samples_per_prompt, *shape), generator=gen, dtype=torch.float64)
    held = max(1, round(c.samples_per_prompt / 4))
    fit = c.fit.model_copy(update={"holdout": held / c.samples_per_prompt})
    return distill(den, noise.to(pipe.device), sigmas, c.solver, c.teacher, fit)


# Loading and registering: one key and one set of params for ``dode distill-pipeline`` and the distill-pipeline stage.
def load_pipeline(path_or_id: str, device: str) -> Any:
    """The diffusers pipeline of a folder written by ``save_pretrained`` (or a hub id), its progress bars off, on
    ``device``; one ValueError that says what to pass when it does not load."""
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(path_or_id)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load a diffusers pipeline from {path_or_id!r}: {err}. Pass a local folder written by "
            "save_pretrained, or a hub id on a machine with network access"
        ) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def pipeline_lambdas_key(model: str, config: PipelineDistillConfig) -> str:
    """The registry key of lambdas distilled for pipeline ``model`` (its folder or hub id, as given)."""
    return f"pipeline/{model}/{config.solver}/nfe{config.nfe}"


def pipeline_lambdas_params(model: str, config: PipelineDistillConfig, prompts: Sequence[str]) -> dict[str, Any]:
    """What a fit of ``config`` over ``prompts`` for pipeline ``model`` is known by before the pipeline loads (the
    prompts by their count and sha256): a registry lookup by these finds the same fit. Registered lambdas carry
    more beside them (``register_pipeline_lambdas``: the grid, the teacher's record)."""
    prompts = _prompts(prompts)
    return {"model": model, "family": config.family, "height": config.height, "width": config.width,
            "guidance_scale": config.guidance_scale, "negative_prompt": config.negative_prompt,
            "n_prompts": len(prompts), "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
            "samples_per_prompt": config.samples_per_prompt, "seed": config.seed,
            "teacher_config": config.teacher.model_dump(mode="json"), "fit": config.fit.model_dump(mode="json")}


def register_pipeline_lambdas(registry: Registry, model: str, config: PipelineDistillConfig, prompts: Sequence[str],
                              pipe: Any, lam: Lambdas, provenance: Mapping[str, Any] | None = None) -> Artifact:
    """Publish lambdas ``distill_pipeline(pipe, prompts, config)`` fitted for pipeline ``model`` as a "lambdas"
    artifact: ``pipeline_lambdas_key``, ``pipeline_lambdas_params`` and the student grid and teacher record."""
    grid = config.grid_for(is_flow_config(pipe.scheduler.config))
    params = {**pipeline_lambdas_params(model, config, prompts), "grid": grid.to_dict(), "teacher": lam.teacher}
    return save_lambdas(registry, lam, pipeline_lambdas_key(model, config), params=params, provenance=provenance)


__all__ = ["GuidedNetwork", "GuidedUNet", "PipelineDistillConfig", "distill_pipeline", "flow_latent_shape",
           "flow_pipeline_denoiser", "latent_shape", "load_pipeline", "pipeline_denoiser", "pipeline_lambdas_key",
           "pipeline_lambdas_params", "register_pipeline_lambdas", "sdxl_added_conditioning"]
