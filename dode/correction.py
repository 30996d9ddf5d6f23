"""The D-ODE method (Kim, Tang & Yu, CVPR 2024): the correction, the closed-form fit and the weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from .types import Evaluation, Tensor

Correction = Literal["data", "noise"]
CORRECTIONS: tuple[str, ...] = ("data", "noise")
ALIGNMENTS: tuple[str, ...] = ("exact", "official")
LAMBDAS_SCHEMA_VERSION = 1


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

    ``teacher`` records how the targets were made (solver, factor, alignment, teacher sigmas' length);
    ``guard`` what the held-out guard measured and changed (empty when the guard was off).
    """

    values: tuple[float, ...]
    solver: str
    sigmas: tuple[float, ...]
    correction: str = "data"
    teacher: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] = field(default_factory=dict)
    n_fit: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        if self.correction not in CORRECTIONS:
            raise ValueError(f"unknown correction {self.correction!r}; choose one of {list(CORRECTIONS)}")

    @property
    def nfe(self) -> int:
        return len(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": LAMBDAS_SCHEMA_VERSION, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lambdas:
        data = dict(data)
        version = data.pop("schema_version", None)
        if version != LAMBDAS_SCHEMA_VERSION:
            raise ValueError(
                f"lambdas schema version {version!r}, this dode reads {LAMBDAS_SCHEMA_VERSION}; "
                "re-distill with this version of dode"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Lambdas:
        return cls.from_dict(json.loads(text))

    def check_matches(self, sigmas: Tensor, solver: str, correction: str) -> None:
        """Raise a ValueError unless these weights were fitted for this grid, solver and flavour."""
        if solver != self.solver:
            raise ValueError(
                f"these lambdas were fitted for solver {self.solver!r}, not {solver!r}; "
                f"sample with solver={self.solver!r} or distill new lambdas"
            )
        if correction != self.correction:
            raise ValueError(
                f"these lambdas use the {self.correction!r} correction, not {correction!r}; "
                f"pass correction={self.correction!r}"
            )
        mine = torch.tensor(self.sigmas, dtype=torch.float64)
        if mine.shape != sigmas.shape or not torch.allclose(mine, sigmas.to(torch.float64), rtol=1e-9, atol=1e-12):
            raise ValueError(
                f"these lambdas were fitted on a {len(mine) - 1}-step grid starting {list(self.sigmas[:3])}, "
                f"not on the given {len(sigmas) - 1}-step grid; sample on the same grid or distill new lambdas"
            )
