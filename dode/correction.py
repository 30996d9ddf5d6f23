"""The D-ODE method (Kim, Tang & Yu, CVPR 2024): the correction, the closed-form fit and the weights."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, Literal

import torch

from .gaussian import FirstStep
from .types import Evaluation, Tensor

Correction = Literal["data", "noise"]
CORRECTIONS: tuple[str, ...] = ("data", "noise")
ALIGNMENTS: tuple[str, ...] = ("exact", "official")
LAMBDAS_SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (1, 2, 3)  # 2 added objective, options, fit and model; 3 first_step (defaults before)
MAX_ABS_LAMBDA = 1e8  # far beyond any fitted weight (degenerate greedy fits reach ~1e4); larger values are corrupt input


def _same_grid(a: Tensor, b: Tensor) -> bool:
    """Two sigma grids equal up to float64 rounding."""
    b = b.detach().to("cpu", torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-9, atol=1e-12))


def _floats(values: Any, name: str) -> list[float]:
    """A list of floats from a JSON sequence of numbers; a ValueError naming the field otherwise."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise ValueError(f"lambdas field {name!r} must be a list of numbers, got {values!r:.80}")
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"lambdas field {name!r} must be a list of numbers, got {values!r:.80}") from None


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

    ``sigmas`` is the grid to sample on (the given one, or the learned one for objectives that move
    the timesteps); ``teacher`` records how the targets were made (solver, factor, alignment, teacher
    steps); ``objective`` and ``options`` the distillation objective (``dode.objectives``) and its
    options; ``fit`` what the fit reported (iterations, held-out losses); ``guard`` what the held-out
    guard measured and chose (empty when the guard was off); ``model`` the fingerprint of the model
    the weights were fitted on ("" when unknown); ``first_step`` the analytic first step they were fitted
    with (``dode.gaussian.FirstStep.to_dict()``; empty for the network's), which sampling with them uses.
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
        object.__setattr__(self, "values", tuple(_floats(self.values, "values")))
        object.__setattr__(self, "sigmas", tuple(_floats(self.sigmas, "sigmas")))
        if self.correction not in CORRECTIONS:
            raise ValueError(f"unknown correction {self.correction!r}; choose one of {list(CORRECTIONS)}")
        bad = [v for v in self.values if not math.isfinite(v) or abs(v) > MAX_ABS_LAMBDA]
        if bad:
            raise ValueError(
                f"lambdas must be finite and at most {MAX_ABS_LAMBDA:g} in magnitude, got {bad[:3]}; "
                "these weights are corrupt: distill new ones"
            )
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

    def check_first(self, first: FirstStep | None) -> FirstStep | None:
        """The first step to sample these weights with: their own; a different one passed with them is an error."""
        own = self.first
        same = own is not None and first is not None and (first.kind, first.gaussian.fingerprint) == (
            own.kind, own.gaussian.fingerprint)
        if first is not None and not same:
            raise ValueError("these lambdas were fitted with " + (f"the {own.kind!r} first step of another Gaussian"
                             if own else "the network's first step") + "; sample without passing a first step "
                             "(the lambdas carry their own) or distill lambdas with this one")
        return own

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": LAMBDAS_SCHEMA_VERSION, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> Lambdas:
        """Lambdas from their JSON object; one ValueError naming the problem for anything malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"lambdas must be a JSON object, got a {type(data).__name__}")
        data = dict(data)
        version = data.pop("schema_version", None)
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(
                f"lambdas schema version {version!r}, this dode reads {list(READABLE_SCHEMA_VERSIONS)}; "
                "re-distill with this version of dode"
            )
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - known), [k for k in ("values", "solver", "sigmas") if k not in data]
        if unknown or missing:
            raise ValueError(f"malformed lambdas: unknown fields {unknown}, missing fields {missing}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Lambdas:
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ValueError(f"lambdas are not valid JSON: {err}") from None
        return cls.from_dict(data)

    def sampling_grid(self, sigmas: Tensor) -> Tensor:
        """The grid to sample on when a job asks for ``sigmas``: these weights' own grid, where ``sigmas`` is it
        or the start grid a learned grid was fitted from (``fit["start_sigmas"]``); otherwise ``sigmas``
        (``check_matches`` then says why they do not fit)."""
        start = self.fit.get("start_sigmas")
        if start is not None and _same_grid(torch.tensor(_floats(start, "fit.start_sigmas"), dtype=torch.float64), sigmas):
            return torch.tensor(self.sigmas, dtype=torch.float64, device=sigmas.device)
        return sigmas

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
        if not _same_grid(torch.tensor(self.sigmas, dtype=torch.float64), sigmas):
            raise ValueError(
                f"these lambdas were fitted on a {len(self.sigmas) - 1}-step grid starting {list(self.sigmas[:3])}, "
                f"not on the given {len(sigmas) - 1}-step grid; sample on the same grid or distill new lambdas"
            )
