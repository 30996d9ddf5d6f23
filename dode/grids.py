"""GridSpec: a named, serialisable grid family resolved against a model's sigma range."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .schedules import VP_SPACINGS, karras_sigmas, vp_sigmas
from .solvers import get_solver
from .types import Denoiser, Tensor

FAMILIES: tuple[str, ...] = ("karras", *VP_SPACINGS)


@dataclass(frozen=True)
class GridSpec:
    """A grid of ``steps`` solver steps from a family: ``karras`` (EDM, rho = 7; its sigma range clipped
    to the model's) or one of the discrete-VP spacings (``time_uniform``, ``time_quadratic``,
    ``logsnr_uniform``, ``ddim``), which need a model with a training schedule (``sigmas_train``)."""

    family: str
    steps: int
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown grid family {self.family!r}; choose one of {list(FAMILIES)}")
        if self.steps < 1:
            raise ValueError(f"a grid needs at least 1 step, got {self.steps}")

    @classmethod
    def for_nfe(cls, family: str, solver: str, nfe: int, **kw: float) -> GridSpec:
        """The grid on which ``solver`` makes exactly ``nfe`` network evaluations."""
        solver_ = get_solver(solver)
        for steps in range(1, nfe + 1):
            if solver_.nfe(steps) == nfe:
                return cls(family, steps, **kw)
        valid = [solver_.nfe(s) for s in range(1, nfe + 2)]
        raise ValueError(f"solver {solver!r} cannot make exactly {nfe} evaluations; valid NFEs include {valid}")

    def sigmas(self, denoiser: Denoiser | None = None) -> Tensor:
        """The grid as a float64 sigma vector ending in 0."""
        table = getattr(denoiser, "sigmas_train", None)
        if self.family == "karras":
            lo, hi = self.sigma_min, self.sigma_max
            if table is not None:
                lo, hi = max(lo, float(table[0])), min(hi, float(table[-1]))
            return karras_sigmas(self.steps, lo, hi, self.rho)
        if table is None:
            raise ValueError(
                f"grid family {self.family!r} needs a discrete VP model (with a training schedule); "
                "use family='karras' for this model"
            )
        return vp_sigmas(1 / (1 + table.to(torch.float64) ** 2), self.steps, self.family)

    def to_dict(self) -> dict:
        return asdict(self)
