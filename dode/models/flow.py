"""Flow-matching (rectified-flow) models as sigma-space denoisers, and their default grids.

A flow-matching model (Lipman et al., 2023; Liu et al., 2023; Stable Diffusion 3, FLUX) is trained on
x_t = (1 - t) x0 + t eps, t in [0, 1], to predict the velocity v = eps - x0 (diffusers'
``FlowMatchEulerDiscreteScheduler`` family, timestep T t with T = ``num_train_timesteps``). Dividing by
1 - t gives sigma space (Karras et al., 2022):

    x = x_t / (1 - t) = x0 + sigma eps,   sigma = t / (1 - t),   t = sigma / (1 + sigma),

so the network sees x_t = x / (1 + sigma) (c_in = 1 / (1 + sigma)) and D(x; sigma) = x_t - t v = E[x0 | x].
t = 1 (pure noise) is sigma = inf; it is represented by ``FLOW_SIGMA_MAX`` = 1e8, where x / (1 + sigma)
and T t equal their t = 1 values to float32 rounding and every solver update differs by O(1 / sigma).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dode.common.bounded import load_json
from dode.core.solvers import SOLVERS, get_solver
from dode.core.types import Tensor

FLOW_SIGMA_MAX = 1e8
UNSUPPORTED_FLOW_OPTIONS = (
    "invert_sigmas",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "stochastic_sampling",
)
TIME_SHIFT_TYPES = ("exponential", "linear")


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def flow_time_to_sigma(t: Tensor) -> Tensor:
    """sigma = t / (1 - t), float64; t = 1 maps to ``FLOW_SIGMA_MAX``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.where(t >= 1, torch.full_like(t, FLOW_SIGMA_MAX), t / (1 - t).clamp_min(1 / FLOW_SIGMA_MAX))


def sigma_to_flow_time(sigma: Tensor) -> Tensor:
    """t = sigma / (1 + sigma)."""
    return sigma / (1 + sigma)


def is_flow_config(config: Mapping[str, Any]) -> bool:
    """Whether a scheduler config is a flow-matching one (``FlowMatchEulerDiscreteScheduler``'s keys)."""
    return "shift" in config and "beta_schedule" not in config


def is_flow_folder(folder: Path) -> bool:
    """Whether a diffusers pipeline folder's scheduler is a flow-matching one."""
    path = folder / "scheduler" / "scheduler_config.json"
    try:
        return path.is_file() and is_flow_config(load_json(path))
    except ValueError:
        return False


def check_flow_start(solver: str, sigmas: Tensor) -> None:
    """One ValueError when ``solver`` cannot start at t = 1 (sigma = ``FLOW_SIGMA_MAX``, the default flow
    grid's first level), as its ``Solver.infinite_start`` says. Euler's first update x' = D + (sigma'/sigma)(x - D)
    tends to D + sigma' n, and the multistep solvers begin with it; Heun and the singlestep DPM-Solvers
    step across [sigma', sigma] with a later evaluation (x + (sigma' - sigma) d), unbounded as sigma -> inf."""
    if float(sigmas[0]) >= FLOW_SIGMA_MAX and not get_solver(solver).infinite_start:
        raise ValueError(
            f"{solver!r} cannot start at t = 1 (sigma = inf), where this flow-matching grid begins; use one of "
            f"{[name for name, s in SOLVERS.items() if s.infinite_start]}, or a grid from a finite sigma "
            "(e.g. grid='karras')"
        )


@dataclass(frozen=True)
class FlowSchedule:
    """diffusers' flow-matching timestep schedule: ``shift`` s (t -> s t / (1 + (s - 1) t)), or, with
    ``use_dynamic_shifting``, the resolution-dependent shift t -> e^mu / (e^mu + (1/t - 1)) ("exponential";
    "linear": mu / (mu + (1/t - 1))), mu linear in the image sequence length from (base_image_seq_len,
    base_shift) to (max_image_seq_len, max_shift) (SD3 and FLUX's ``calculate_shift``); ``shift_terminal``
    stretches the grid to end at that t."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    time_shift_type: str = "exponential"
    shift_terminal: float | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FlowSchedule:
        """The schedule of a ``FlowMatchEulerDiscreteScheduler`` (or its config); one ValueError for options
        that leave the deterministic flow-matching grid (listed in ``UNSUPPORTED_FLOW_OPTIONS``)."""
        config = dict(getattr(config, "config", config))
        used = [key for key in UNSUPPORTED_FLOW_OPTIONS if config.get(key)]
        if used:
            raise ValueError(
                f"flow-matching options {used} are not supported; set them to False "
                f"(supported: shift, use_dynamic_shifting, time_shift_type, shift_terminal)"
            )
        if config.get("time_shift_type", "exponential") not in TIME_SHIFT_TYPES:
            raise ValueError(
                f"unknown time_shift_type {config['time_shift_type']!r}; choose one of {list(TIME_SHIFT_TYPES)}"
            )
        known = {key: config[key] for key in cls.__dataclass_fields__ if config.get(key) is not None}
        return cls(**known)

    def to_config(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}

    def mu(self, image_seq_len: int) -> float:
        """The dynamic shift for ``image_seq_len`` latent tokens (diffusers' ``calculate_shift``)."""
        m = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return image_seq_len * m + self.base_shift - m * self.base_image_seq_len

    def shifted(self, t: Tensor, mu: float | None = None) -> Tensor:
        """The shifted times of ``t`` (float64), as ``FlowMatchEulerDiscreteScheduler.set_timesteps``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.use_dynamic_shifting:
            if mu is None:
                raise ValueError("this schedule uses dynamic shifting: pass mu (FlowSchedule.mu(image_seq_len))")
            scale = math.exp(mu) if self.time_shift_type == "exponential" else mu
            out = scale / (scale + (1 / t - 1))
        else:
            out = self.shift * t / (1 + (self.shift - 1) * t)
        if self.shift_terminal:
            one_minus = 1 - out
            out = 1 - one_minus / (one_minus[-1] / (1 - self.shift_terminal))
        return out

    def times(self, steps: int, mu: float | None = None) -> Tensor:
        """The default ``steps`` times: linspace from t_max = 1 to t_min (the training table's smallest t,
        1/T, already shifted once when the shift is static, as diffusers does), then shifted."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"a flow-matching grid needs an integer number of steps >= 1, got {steps!r}")
        t_min = 1 / self.num_train_timesteps
        if not self.use_dynamic_shifting:
            t_min = self.shift * t_min / (1 + (self.shift - 1) * t_min)
        return self.shifted(torch.linspace(1.0, t_min, steps, dtype=torch.float64), mu)

    def sigmas(self, steps: int, mu: float | None = None, times: Tensor | None = None) -> Tensor:
        """The sigma-space grid (ending in 0) of the default times, or of the given unshifted ``times``
        (what pipelines pass as ``sigmas=``, e.g. FLUX's linspace(1, 1/N, N))."""
        t = self.times(steps, mu) if times is None else self.shifted(times, mu)
        return torch.cat([flow_time_to_sigma(t), torch.zeros(1, dtype=torch.float64)])


class FlowDenoiser:
    """A flow-matching velocity model v(x_t, T t) as the sigma-space denoiser D(x; sigma) = x_t - t v with
    t = sigma / (1 + sigma), x_t = x / (1 + sigma) (module docstring). ``model(x_t, timestep)`` returns
    the velocity (or an object with ``.sample``); ``schedule`` and ``mu`` give the model's default grid
    (``GridSpec("flow", steps)``); ``model_kwargs`` are passed through to every call."""

    sigma_min = 0.0  # trained on every t in (0, 1]: any sigma > 0 is in range
    sigma_max = FLOW_SIGMA_MAX

    def __init__(
        self,
        model: Callable[..., Any] | None,
        schedule: FlowSchedule | None = None,
        *,
        mu: float | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.schedule, self.mu = model, schedule or FlowSchedule(), mu
        self.model_kwargs = dict(model_kwargs or {})

    def with_mu(self, mu: float | None) -> FlowDenoiser:
        """The same model with the dynamic shift ``mu`` (one resolution)."""
        return FlowDenoiser(self.model, self.schedule, mu=mu, model_kwargs=self.model_kwargs)

    def flow_sigmas(self, steps: int) -> Tensor:
        """The model's default grid of ``steps`` steps (FlowMatchEulerDiscreteScheduler's sigmas)."""
        return self.schedule.sigmas(steps, self.mu)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """The model timestep T t of each sigma (diffusers' flow-matching ``timesteps``)."""
        return self.schedule.num_train_timesteps * sigma_to_flow_time(sigma.to(torch.float64))

    def denoised(self, velocity: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """D = x_t - t v for a velocity predicted at x (float64)."""
        sigma = _bcast(sigma.to(torch.float64), x)
        return x.to(torch.float64) / (1 + sigma) - sigma / (1 + sigma) * velocity.to(torch.float64)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        params = getattr(self.model, "parameters", None)
        p = next(iter(params()), None) if params else None
        dtype, device = (p.dtype, p.device) if p is not None else (x.dtype, x.device)
        sigma64 = sigma.to(torch.float64).reshape(-1).expand(len(x))
        x_t = x.to(torch.float64) / _bcast(1 + sigma64, x)
        timestep = self.sigma_to_t(sigma64).to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype)
        out = self.model(x_t.to(device=device, dtype=dtype), timestep, **self.model_kwargs)
        out = (out.sample if hasattr(out, "sample") else out).to(device=x.device)
        return self.denoised(out, x, sigma64)


def unet_call(unet: Any) -> Callable[..., Tensor]:
    """A diffusers UNet trained for flow matching as model(x_t, timestep)."""

    def call(x_t: Tensor, timestep: Tensor, **kwargs: Any) -> Tensor:
        return unet(x_t, timestep, **kwargs).sample

    call.parameters = unet.parameters
    return call


def sd3_call(transformer: Any) -> Callable[..., Tensor]:
    """An ``SD3Transformer2DModel`` as model(x_t, timestep): keyword ``hidden_states``, timestep T t,
    conditioning ``encoder_hidden_states`` and ``pooled_projections`` from ``model_kwargs``."""

    def call(x_t: Tensor, timestep: Tensor, **kwargs: Any) -> Tensor:
        return transformer(hidden_states=x_t, timestep=timestep, **kwargs).sample

    call.parameters = transformer.parameters
    return call


def pack_latents(x: Tensor) -> Tensor:
    """FLUX's 2x2 patch packing: (B, C, H, W) -> (B, H/2 W/2, 4 C)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)


def unpack_latents(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The inverse of ``pack_latents`` for latents of shape (B, C, H, W)."""
    b, c, h, w = shape
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def flux_call(transformer: Any) -> Callable[..., Tensor]:
    """A ``FluxTransformer2DModel`` as model(x_t, timestep) on (B, C, H, W) latents: packed into 2x2
    patches with FLUX's image ids, timestep T t / T (the FLUX pipeline passes ``timestep / 1000``);
    ``encoder_hidden_states``, ``pooled_projections``, ``txt_ids`` and ``guidance`` from ``model_kwargs``."""
    from diffusers import FluxPipeline

    def call(x_t: Tensor, timestep: Tensor, **kwargs: Any) -> Tensor:
        b, _, h, w = x_t.shape
        ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
        out = transformer(hidden_states=pack_latents(x_t), timestep=timestep / 1000, img_ids=ids, **kwargs).sample
        return unpack_latents(out, tuple(x_t.shape))

    call.parameters = transformer.parameters
    return call


FLUX_LATENT_SIDE = 128  # FluxPipeline's default_sample_size: 1024-pixel images, 128 x 128 latents


def network_call(net: Any) -> tuple[Callable[..., Tensor], tuple[int, ...], int]:
    """A pipeline's network as model(x_t, timestep), one sample's shape and its image sequence length (the
    tokens dynamic shifting counts): a FLUX or SD3-style transformer, or a UNet."""
    cfg, kind = net.config, type(net).__name__
    if kind.startswith("Flux"):
        side = FLUX_LATENT_SIDE
        return flux_call(net), (cfg.in_channels // 4, side, side), side * side // 4
    size = cfg.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if "Transformer" in kind:
        return sd3_call(net), (cfg.in_channels, *size), size[0] * size[1] // cfg.patch_size**2
    return unet_call(net), (cfg.in_channels, *size), size[0] * size[1]


def load_flow_pipeline(path_or_id: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                       model_kwargs: dict[str, Any] | None = None) -> tuple[FlowDenoiser, Any, tuple[int, ...]]:
    """The network of a diffusers flow-matching pipeline folder (or hub id) as a ``FlowDenoiser`` (its
    dynamic shift at the network's default resolution), the loaded network, and one sample's shape. Only the
    ``transformer`` (or ``unet``) and the scheduler config are read, no text encoders or VAE;
    text-conditioned models need their conditioning in ``model_kwargs`` (``encoder_hidden_states``,
    ``pooled_projections``; FLUX also ``txt_ids`` and ``guidance``)."""
    import diffusers
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    try:
        index = DiffusionPipeline.load_config(path_or_id)
        scheduler = FlowMatchEulerDiscreteScheduler.load_config(path_or_id, subfolder="scheduler")
        part = next((name for name in ("transformer", "unet") if (index.get(name) or [None, None])[1]), None)
        if part is None:
            raise ValueError("its model_index.json names neither a transformer nor a unet")
        net = getattr(diffusers, index[part][1]).from_pretrained(path_or_id, subfolder=part, torch_dtype=dtype)
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"could not load a flow-matching network from {path_or_id!r}: {err}") from err
    if not is_flow_config(scheduler):
        raise ValueError(f"{path_or_id!r} has no flow-matching scheduler (FlowMatchEulerDiscreteScheduler)")
    schedule = FlowSchedule.from_config(scheduler)
    net = net.to(device).eval()
    call, shape, seq_len = network_call(net)
    mu = schedule.mu(seq_len) if schedule.use_dynamic_shifting else None
    return FlowDenoiser(call, schedule, mu=mu, model_kwargs=model_kwargs), net, shape
