"""Core types: the denoiser protocol, one network evaluation, and the solver state.

Everything in the core lives in EDM/Karras sigma space (Karras et al., 2022): ``x = x0 + sigma * n``
with ``n ~ N(0, I)``, and a denoiser returns an estimate of ``x0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

Tensor = torch.Tensor


@runtime_checkable
class Denoiser(Protocol):
    """D(x; sigma) ~ E[x0 | x] for x = x0 + sigma * n.

    x: (B, *shape); sigma: (B,). Returns (B, *shape). Deterministic, no side effects.
    """

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Evaluation:
    """One network evaluation: where it was made and what the denoiser returned (raw, uncorrected)."""

    x: Tensor  # (B, *shape) float64, the evaluation point
    sigma: Tensor  # 0-dim float64
    denoised: Tensor  # (B, *shape) float64, raw D(x; sigma)

    @property
    def eps(self) -> Tensor:
        """The noise prediction eps = (x - D) / sigma."""
        return (self.x - self.denoised) / self.sigma


@dataclass(frozen=True)
class SolverState:
    """What a solver carries between evaluations; immutable so every update is a pure function.

    ``x`` is the latest state (the next evaluation point, or the result after the last evaluation);
    ``history`` holds the raw evaluations made so far, oldest first (multistep history keeps raw
    outputs, as in the D-ODE reference code); ``carry`` holds solver-specific tensors (UniPC's
    corrected state).
    """

    x: Tensor
    k: int = 0
    history: tuple[Evaluation, ...] = ()
    carry: tuple[Tensor, ...] = ()
