"""The D-ODE method (Kim, Tang & Yu, CVPR 2024): the correction, the closed-form fit and the weights."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch

from dode.core.gaussian import FirstStep
from dode.core.types import Evaluation, Tensor

Correction = Literal["data", "noise"]
CORRECTIONS: tuple[str, ...] = ("data", "noise")
ALIGNMENTS: tuple[str, ...] = ("exact", "official")
MAX_ABS_LAMBDA = 1e8  # far beyond any fitted weight (degenerate greedy fits reach ~1e4); larger values are corrupt input


def floats(values: Any, name: str) -> list[float]:
    """A list of floats from a JSON sequence of numbers; a ValueError naming the field otherwise."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise ValueError(f"lambdas field {name!r} must be a list of numbers, got {values!r:.80}")
    try:
        if any(isinstance(v, (str, bytes, bool)) for v in values):  # "0.5" or true in a file is not a number
            raise TypeError
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"lambdas field {name!r} must be a list of numbers, got {values!r:.80}") from None


def lambda_values(values: Any, name: str = "values") -> tuple[float, ...]:
    """D-ODE weights from a sequence of numbers, each finite and at most ``MAX_ABS_LAMBDA`` in magnitude: the one
    rule for lambdas wherever they are read (stored ``Lambdas``, a scheduler's config, a saved pipeline's
    ``scheduler_config.json``); one ValueError otherwise."""
    out = tuple(floats(values, name))
    bad = [v for v in out if not math.isfinite(v) or abs(v) > MAX_ABS_LAMBDA]
    if bad:
        raise ValueError(f"lambdas must be finite and at most {MAX_ABS_LAMBDA:g} in magnitude, got {bad[:3]}; "
                         "these weights are corrupt: distill new ones")
    return out


def dode_correct(out: Tensor, out_prev: Tensor | None, lam: float) -> Tensor:
    """The D-ODE step, Kim et al. (2024) eq. 9: D~_k = D_k + lam_k (D_k - D_{k-1}).

    Extrapolates the model output along its most recent change; the identity without a previous output.
    """
    if out_prev is None:
        return out
    return out + lam * (out - out_prev)


def correction_basis(ev: Evaluation, flavour: str) -> Tensor:
    """The quantity the correction extrapolates: D for ``data``, eps = (x - D) / sigma for ``noise``."""
    return ev.denoised if flavour == "data" else ev.eps


def corrected_denoised(ev: Evaluation, basis_prev: Tensor | None, lam: float, flavour: str) -> Tensor:
    """D~_k as a denoiser output, whichever flavour: the one place the correction is applied.

    ``data``: D~ = D + lam (D - D_prev). ``noise``: eps~ = eps + lam (eps - eps_prev), i.e.
    D~ = x - sigma eps~ = D - sigma lam (eps - eps_prev) (the reference code's eps-prediction form;
    eps_{-1} is the unit starting noise x_T). Both are D itself, bit for bit, when lam = 0.
    """
    if flavour == "data":
        return dode_correct(ev.denoised, basis_prev, lam)
    return ev.denoised - ev.sigma * (dode_correct(ev.eps, basis_prev, lam) - ev.eps)


def fit_lambda(direction: Tensor, residual: Tensor) -> float:
    """argmin_lam ||residual - lam * direction||^2 pooled over the batch: <d, r> / <d, d>, in float64."""
    d, r = direction.to(torch.float64), residual.to(torch.float64)
    denom = float(d.square().sum())
    return 0.0 if denom == 0.0 else float((d * r).sum()) / denom


@dataclass(frozen=True)
class Lambdas:
    """D-ODE weights: one scalar per network evaluation, fitted on one student grid and solver.

    ``sigmas`` is the grid they were fitted on (the given one, or the learned one for objectives that move
    the timesteps), the one they sample on (``dode.core.fitted``); ``teacher`` records how the targets were made (solver, factor, alignment, teacher
    steps); ``objective`` and ``options`` the distillation objective (``dode.distillation.objectives``) and its
    options; ``fit`` what the fit reported (iterations, held-out losses); ``guard`` what the held-out
    guard measured and chose (empty when the guard was off); ``model`` the fingerprint of the model
    the weights were fitted on ("" when unknown); ``first_step`` the analytic first step they were fitted
    with (``dode.core.gaussian.FirstStep.to_dict()``; empty for the network's), which sampling with them uses.
    """

    values: tuple[float, ...]
    solver: str
    sigmas: tuple[float, ...]
    correction: str = "data"
    teacher: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] = field(default_factory=dict)
    n_fit: int = 0
    objective: str = "step"
    options: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    first_step: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", lambda_values(self.values))
        object.__setattr__(self, "sigmas", tuple(floats(self.sigmas, "sigmas")))
        if self.correction not in CORRECTIONS:
            raise ValueError(f"unknown correction {self.correction!r}; choose one of {list(CORRECTIONS)}")
        for name in ("teacher", "guard", "options", "fit", "first_step"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"lambdas field {name!r} must be a JSON object, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.solver, str) or not isinstance(self.objective, str) or not isinstance(self.model, str):
            raise ValueError("lambdas fields 'solver', 'objective' and 'model' must be strings")
        _ = self.first  # decoded and validated once, here

    @property
    def nfe(self) -> int:
        """Evaluations, one lambda each (an analytic first evaluation included)."""
        return len(self.values)

    @cached_property
    def first(self) -> FirstStep | None:
        """The analytic first step these weights were fitted with, or None (the network's); decoded once."""
        return FirstStep.from_dict(self.first_step)
