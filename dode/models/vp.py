"""Adapters at the edge: diffusers VP models and EDM-preconditioned networks as sigma-space denoisers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dode.core.schedules import vp_sigmas_table
from dode.core.types import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def prediction_half(out: Tensor, x: Tensor) -> Tensor:
    """The model's prediction for input ``x``: all of ``out``, or its first C channels when the model
    also learned the variance (2C channels, improved DDPM / ADM); anything else is an error."""
    if out.shape == x.shape:
        return out
    if out.shape == (len(x), 2 * x.shape[1], *x.shape[2:]):
        return out[:, : x.shape[1]]
    raise ValueError(
        f"the model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; expected the input's "
        "shape, or twice its channels for a model with learned variance"
    )


def cycle_rows(values: Tensor, n: int) -> Tensor:
    """``values`` (L, ...) repeated to n rows, row i = values[i mod L]; n must be a multiple of L, so that
    any split of a batch at multiples of L (the distiller's fit and held-out parts) keeps its rows."""
    if n % len(values):
        raise ValueError(
            f"a batch of {n} rows does not cycle through {len(values)} conditions; "
            f"use a multiple of {len(values)}"
        )
    return values.repeat(n // len(values), *([1] * (values.ndim - 1)))


def is_class_conditional(unet: Any) -> bool:
    """Whether a diffusers UNet takes ``class_labels`` (a class embedding table or type)."""
    config = getattr(unet, "config", None)
    return (
        getattr(config, "num_class_embeds", None) is not None
        or getattr(config, "class_embed_type", None) is not None
    )


class ClassConditionalUNet:
    """A class-conditional UNet (``class_labels``, e.g. ``UNet2DModel(num_class_embeds=...)``) as one model
    out(x_vp, t), with classifier-free guidance over classes (Ho & Salimans, 2022).

    Row i of a batch gets ``class_labels[i mod L]`` (L labels; L = batch size: one label per sample).
    With ``guidance_scale`` g > 1 both branches come from one batched call on [x, x] with
    [null, labels] and out = out_null + g (out_label - out_null), where ``null_class`` is the index of the
    unconditional embedding the model was trained with (label dropout); g <= 1: the labels alone.
    """

    def __init__(
        self, unet: Any, class_labels: Any, *, guidance_scale: float = 1.0, null_class: int | None = None
    ) -> None:
        labels = torch.as_tensor(class_labels)
        if labels.ndim != 1 or not len(labels) or labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                "class_labels must be a non-empty 1-D sequence of integers (one per sample), "
                f"got {class_labels!r:.80}"
            )
        n_classes = getattr(unet.config, "num_class_embeds", None)
        guided = float(guidance_scale) > 1.0
        if guided and null_class is None:
            raise ValueError(
                "classifier-free guidance (guidance_scale > 1) needs null_class, "
                "the model's unconditional label index"
            )
        used = [*labels.tolist(), *([null_class] if guided else [])]
        if n_classes is not None and not all(0 <= c < n_classes for c in used):
            raise ValueError(
                f"class labels must be in 0..{n_classes - 1} for this UNet "
                f"(num_class_embeds={n_classes}), got {used}"
            )
        self.unet, self.labels, self.guidance_scale = unet, labels.long(), float(guidance_scale)
        self.null_class = null_class if guided else None

    def parameters(self):  # the dtype and device VPDenoiser casts inputs to
        return self.unet.parameters()

    def __call__(self, x_vp: Tensor, t: Tensor) -> Tensor:
        labels = cycle_rows(self.labels, len(x_vp)).to(x_vp.device)
        if self.null_class is None:
            return self.unet(x_vp, t, class_labels=labels).sample
        null = torch.full_like(labels, self.null_class)
        out = self.unet(
            torch.cat([x_vp, x_vp]), torch.cat([t, t]), class_labels=torch.cat([null, labels])
        ).sample
        out_null, out_label = out.chunk(2)
        return out_null + self.guidance_scale * (out_label - out_null)


class VPDenoiser:
    """A diffusers model trained on a discrete DDPM schedule, seen as D(x; sigma) in sigma space.

    sigma_t = sqrt((1 - abar_t) / abar_t); the VP input is x / sqrt(sigma^2 + 1); continuous sigma maps
    to a fractional timestep by interpolation in log sigma (k-diffusion's DiscreteSchedule). The output
    is converted once: eps -> D = x - sigma eps; v -> D = sqrt(abar) x_vp - sqrt(1 - abar) v; sample -> D.
    A model with learned variance (out_channels = 2 x in_channels: improved DDPM, Nichol & Dhariwal, 2021,
    and ADM) returns [prediction, variance] along channels; the first half is used, the variance half is
    dropped (the probability-flow ODE needs only the mean). ``model_kwargs`` (e.g.
    ``encoder_hidden_states``) are passed through to every call; per-sample class labels and guidance
    come through the model (``ClassConditionalUNet``).
    """

    def __init__(
        self,
        model: Callable[..., Any],
        alphas_cumprod: Tensor,
        prediction_type: str = "epsilon",
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}"
            )
        self.model = model
        self.prediction_type = prediction_type
        self.sigmas_train = vp_sigmas_table(torch.as_tensor(alphas_cumprod).detach().cpu())
        self.log_sigmas = self.sigmas_train.log()
        self.model_kwargs = dict(model_kwargs or {})

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas_train[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas_train[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional training timestep for each sigma (clamped to [0, T-1]); exact integers on the table."""
        log_sigma = sigma.to("cpu", torch.float64).log()  # differentiable: learned grids move sigma
        hi = torch.searchsorted(self.log_sigmas, log_sigma.detach()).clamp(1, len(self.log_sigmas) - 1)
        lo = hi - 1
        w = (log_sigma - self.log_sigmas[lo]) / (self.log_sigmas[hi] - self.log_sigmas[lo])
        t = (lo + w).clamp(0, len(self.log_sigmas) - 1)
        return torch.where((t - t.round()).abs() < 1e-6, t.round(), t)

    def _param(self) -> torch.nn.Parameter | None:
        params = getattr(self.model, "parameters", None)
        return next(iter(params()), None) if params else None

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        p = self._param()
        dtype, device = (p.dtype, p.device) if p is not None else (x.dtype, x.device)
        sigma64 = sigma.to(torch.float64)
        c_in = _bcast(1 / (sigma64**2 + 1).sqrt(), x)
        x_vp = x.to(torch.float64) * c_in
        t = self.sigma_to_t(sigma64).to(
            device=device, dtype=torch.float32 if dtype != torch.float64 else dtype
        )
        out = self.model(x_vp.to(device=device, dtype=dtype), t, **self.model_kwargs)
        out = prediction_half(out.sample if hasattr(out, "sample") else out, x).to(
            device=x.device, dtype=torch.float64
        )
        if self.prediction_type == "epsilon":
            return x.to(torch.float64) - _bcast(sigma64, x) * out
        if self.prediction_type == "v_prediction":
            return c_in * x_vp - _bcast(sigma64, x) * c_in * out
        return out

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        class_labels: Any = None,
        guidance_scale: float = 1.0,
        null_class: int | None = None,
    ) -> VPDenoiser:
        """Load a diffusers pipeline folder (or hub id) holding a ``unet`` and a DDPM-style ``scheduler``.

        A class-conditional UNet needs ``class_labels`` (and ``null_class`` for ``guidance_scale`` > 1),
        see ``ClassConditionalUNet``.
        """
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        try:
            pipe = DiffusionPipeline.from_pretrained(path_or_id, dtype=dtype)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"could not load a diffusers pipeline from {path_or_id!r}: {err}. Pass a local folder written "
                "by save_pretrained, or a hub id on a machine with network access (HF_HUB_OFFLINE unset)"
            ) from err
        if not hasattr(pipe, "unet") or not hasattr(pipe.scheduler, "alphas_cumprod"):
            raise ValueError(f"{path_or_id!r} has no unet with a DDPM-style scheduler (alphas_cumprod)")
        unet = pipe.unet.to(device).eval()
        if is_class_conditional(unet) and class_labels is None:
            raise ValueError(
                f"{path_or_id!r} is class-conditional: pass class_labels (one per sample, or cycled)"
            )
        if class_labels is not None:
            unet = ClassConditionalUNet(
                unet, class_labels, guidance_scale=guidance_scale, null_class=null_class
            )
        return cls(unet, pipe.scheduler.alphas_cumprod, pipe.scheduler.config.prediction_type)


class EDMDenoiser:
    """An EDM-style network as a sigma-space denoiser (Karras et al., 2022, Table 1).

    ``preconditioned=True``: ``net(x, sigma, **kw)`` already returns D (EDM's ``EDMPrecond``).
    Otherwise ``net`` is the raw F_theta and D = c_skip x + c_out F(c_in x, c_noise) with
    c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2),
    c_noise = ln(sigma)/4.
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        *,
        preconditioned: bool = True,
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.net, self.preconditioned, self.sigma_data = net, preconditioned, sigma_data
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.model_kwargs = dict(model_kwargs or {})

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        p = next(iter(self.net.parameters()), None) if hasattr(self.net, "parameters") else None
        dtype, device = (p.dtype, p.device) if p is not None else (x.dtype, x.device)
        s = sigma.to(torch.float64)
        if self.preconditioned:
            out = self.net(
                x.to(device=device, dtype=dtype), s.to(device=device, dtype=dtype), **self.model_kwargs
            )
            return out.to(device=x.device, dtype=torch.float64)
        sd = self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        f = self.net(
            (x * _bcast(c_in, x)).to(device=device, dtype=dtype),
            (s.log() / 4).to(device=device, dtype=dtype),
            **self.model_kwargs,
        )
        f = (f.sample if hasattr(f, "sample") else f).to(device=x.device, dtype=torch.float64)
        return _bcast(c_skip, x) * x + _bcast(c_out, x) * f
