"""Noise-level grids in sigma space. Every grid is a decreasing float64 vector ending in 0."""

from __future__ import annotations

import math
import operator

import torch

from dode.core.types import Tensor

VP_SPACINGS = ("time_uniform", "time_quadratic", "logsnr_uniform", "ddim")
MAX_STEPS = 10_000_000  # the longest grid built here (80 MB of float64): a bound checked before allocating


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) eq. 5: ``steps`` levels from sigma_max to sigma_min, then 0.

    sigma_i = (sigma_max^(1/rho) + i/(steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
    Returns shape (steps + 1,), float64.
    """
    steps = _check_steps(steps, "karras_sigmas")
    sigma_min, sigma_max, rho = _finite(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if rho <= 0:
        raise ValueError(f"rho must be > 0 (Karras et al. use 7), got {rho}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0] = sigma_max
    if steps > 1:
        sigmas[-1] = sigma_min
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check_steps(steps: int, where: str) -> int:
    """``steps`` as an int in [1, MAX_STEPS] (numpy and torch integers included), or one ValueError."""
    try:
        value = operator.index(steps) if not isinstance(steps, bool) else None
    except TypeError:
        value = None
    if value is None or not 1 <= value <= MAX_STEPS:
        raise ValueError(f"{where} needs an integer number of steps in [1, {MAX_STEPS}], got {steps!r}")
    return value


def _finite(**values: float) -> list[float]:
    """The values as finite floats, or one ValueError naming them."""
    try:
        out = [float(v) for v in values.values()]
    except (TypeError, ValueError):
        out = [math.nan]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"need finite numbers, got {', '.join(f'{k}={v!r}' for k, v in values.items())}")
    return out


def vp_sigmas_table(alphas_cumprod: Tensor) -> Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for every training timestep t (DDPM -> sigma space).

    abar must be a 1-D sequence of at least 2 values in (0, 1], non-increasing (a DDPM schedule)."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if abar.ndim != 1 or len(abar) < 2 or not ((abar > 0) & (abar <= 1)).all() or (abar[1:] > abar[:-1]).any():
        raise ValueError(
            "alphas_cumprod must be a 1-D non-increasing sequence of at least 2 values in (0, 1] "
            "(a DDPM schedule, e.g. DDPMScheduler().alphas_cumprod)"
        )
    return ((1 - abar) / abar).sqrt()


def sigma_at(table: Tensor, t: Tensor) -> Tensor:
    """sigma at fractional timesteps t, by linear interpolation of log sigma between training steps."""
    t = torch.as_tensor(t, dtype=torch.float64).clamp(0, len(table) - 1)
    lo = t.floor().long().clamp(max=len(table) - 2)
    w = t - lo
    log_table = table.log()
    return (log_table[lo] * (1 - w) + log_table[lo + 1] * w).exp()


def vp_sigmas(alphas_cumprod: Tensor, steps: int, spacing: str = "time_uniform") -> Tensor:
    """Grids for discrete VP (DDPM) models, as sigmas: ``steps`` positive levels then 0.

    - ``time_uniform``: t_i = T-1 - i T/steps (diffusers' "trailing": 999, 899, ... for T=1000, 10 steps);
    - ``time_quadratic``: t_i = (T-1)(1 - i/steps)^2 (Song et al., 2021, DDIM quadratic);
    - ``logsnr_uniform``: log sigma uniform from sigma(T-1) to sigma(0) (DPM-Solver's logSNR spacing);
    - ``ddim``: the DDIM integer grid int(j T/steps), j = steps-1 ... 0 (the reference code's rule).
    """
    steps = _check_steps(steps, "vp_sigmas")
    table = vp_sigmas_table(alphas_cumprod)
    T = len(table)
    i = torch.arange(steps, dtype=torch.float64)
    if spacing == "time_uniform":
        sig = sigma_at(table, (T - 1) - i * T / steps)
    elif spacing == "time_quadratic":
        sig = sigma_at(table, (T - 1) * (1 - i / steps) ** 2)
    elif spacing == "logsnr_uniform":
        lo, hi = table[0].log(), table[-1].log()
        sig = (hi + (lo - hi) * (i / max(steps - 1, 1))).exp()
    elif spacing == "ddim":
        if steps > T:
            raise ValueError(f"the DDIM integer grid has at most {T} steps, got {steps}")
        t = torch.tensor([int(j * T / steps) for j in range(steps)][::-1], dtype=torch.long)
        sig = table[t]
    else:
        raise ValueError(f"unknown VP spacing {spacing!r}; choose one of {list(VP_SPACINGS)}")
    return torch.cat([sig, sig.new_zeros(1)])


def refine(sigmas: Tensor, factor: int, rho: float = 7.0) -> Tensor:
    """The ``factor``-fold refinement of a grid: every interval split into ``factor`` sub-intervals.

    Points are spaced uniformly in sigma^(1/rho), so the refinement of a Karras grid (same rho) is
    the Karras grid with factor x as many steps, and the result contains every input point exactly.
    """
    check_sigmas(sigmas)
    factor = _check_steps(factor, "refine (factor)")
    _check_steps(factor * (len(sigmas) - 1), f"refine of {len(sigmas) - 1} steps by {factor}")
    (rho,) = _finite(rho=rho)
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    u = sigmas.to(torch.float64) ** (1 / rho)
    frac = torch.arange(factor, dtype=torch.float64) / factor
    fine = (u[:-1, None] + frac[None, :] * (u[1:] - u[:-1])[:, None]).reshape(-1) ** rho
    fine[::factor] = sigmas[:-1].to(torch.float64)
    return torch.cat([fine, sigmas[-1:].to(torch.float64)])


def check_sigmas(sigmas: Tensor) -> None:
    """Raise a ValueError unless sigmas is a 1-D, strictly decreasing, non-negative grid ending in 0."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D tensor of at least 2 noise levels, e.g. dode.karras_sigmas(10)")
    if not torch.isfinite(sigmas).all() or (sigmas < 0).any():
        raise ValueError(f"sigmas must be finite and non-negative, got {sigmas.tolist()}")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(f"sigmas must be strictly decreasing (from noise to data), got {sigmas.tolist()}")
    if sigmas[-1] != 0:
        raise ValueError(
            f"sigmas must end in 0 (the data), got last sigma {float(sigmas[-1])}; append a zero, as "
            "dode.karras_sigmas and dode.vp_sigmas do"
        )


def is_karras(sigmas: Tensor, rho: float = 7.0) -> bool:
    """True when sigmas is karras_sigmas(len-1, sigmas[-2], sigmas[0], rho) up to float64 rounding."""
    steps = len(sigmas) - 1
    if steps < 2:
        return False
    ref = karras_sigmas(steps, float(sigmas[-2]), float(sigmas[0]), rho)
    return bool(torch.allclose(sigmas.to(torch.float64), ref, rtol=1e-9, atol=0.0))


def log_sigma_gap(sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """h = t_next - t with t = -log(sigma) (the DPM-Solver step size in sigma space)."""
    return sigma.log() - sigma_next.log()


__all__ = [
    "VP_SPACINGS",
    "check_sigmas",
    "is_karras",
    "karras_sigmas",
    "log_sigma_gap",
    "refine",
    "sigma_at",
    "vp_sigmas",
    "vp_sigmas_table",
]
