"""GridSpec: a named, serialisable grid family resolved against a model's sigma range."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from dode.core.gaussian import FIRST_STEPS, NETWORK
from dode.core.schedules import VP_SPACINGS, check_sigmas, karras_sigmas, vp_sigmas
from dode.core.solvers import get_solver
from dode.core.types import Denoiser, Tensor

FAMILIES: tuple[str, ...] = ("karras", *VP_SPACINGS, "flow", "explicit")
MAX_STEPS = 100_000  # far beyond any sampling grid; protects against typos like --nfe 1000000000


@dataclass(frozen=True)
class GridSpec:
    """A grid of ``steps`` solver steps from a family: ``karras`` (EDM, rho = 7; its sigma range clipped
    to the model's), one of the discrete-VP spacings (``time_uniform``, ``time_quadratic``,
    ``logsnr_uniform``, ``ddim``), which need a model with a training schedule (``sigmas_train``),
    ``flow``: a flow-matching model's own grid (``FlowDenoiser.flow_sigmas``: diffusers'
    FlowMatchEulerDiscreteScheduler sigmas with the model's shift), or ``explicit``: the given sigma
    ``values`` (strictly decreasing, ending in 0), e.g. a learned grid."""

    family: str
    steps: int
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown grid family {self.family!r}; choose one of {list(FAMILIES)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"a grid needs an integer number of steps in 1..{MAX_STEPS}, got {self.steps!r}")
        if self.family != "explicit":
            if self.values:
                raise ValueError(f"grid family {self.family!r} takes no values; use family='explicit' for given sigmas")
            return
        if not isinstance(self.values, (list, tuple)) or len(self.values) != self.steps + 1:
            got = len(self.values) if isinstance(self.values, (list, tuple)) else type(self.values).__name__
            raise ValueError(f"an explicit grid of {self.steps} steps needs a list of {self.steps + 1} sigma values, got {got}")
        try:
            values = torch.tensor([float(v) for v in self.values], dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"explicit grid values must be numbers, got {list(self.values)[:4]!r:.80}") from None
        check_sigmas(values)
        object.__setattr__(self, "values", tuple(values.tolist()))

    @classmethod
    def explicit(cls, sigmas: Tensor | list[float] | tuple[float, ...]) -> GridSpec:
        """The grid with exactly these sigmas (strictly decreasing, ending in 0), e.g. ``Lambdas.sigmas``."""
        values = tuple(float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas))
        return cls("explicit", max(len(values) - 1, 1), values=values)

    @classmethod
    def for_nfe(cls, family: str, solver: str, nfe: int, **kw: float) -> GridSpec:
        """The grid on which ``solver`` makes exactly ``nfe`` network evaluations."""
        solver_ = get_solver(solver)
        max_nfe = solver_.nfe(MAX_STEPS)
        if isinstance(nfe, bool) or not isinstance(nfe, int) or not 1 <= nfe <= max_nfe:
            raise ValueError(f"nfe must be an integer in 1..{max_nfe} for solver {solver!r}, got {nfe!r}")
        lo, hi = 1, MAX_STEPS  # solver_.nfe is increasing in steps: bisect for the smallest steps with nfe(steps) >= nfe
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if solver_.nfe(mid) < nfe else (lo, mid)
        if solver_.nfe(lo) == nfe:
            return cls(family, lo, **kw)
        near = sorted({solver_.nfe(s) for s in range(max(1, lo - 2), lo + 2)})
        raise ValueError(f"solver {solver!r} cannot make exactly {nfe} evaluations; valid NFEs near it: {near}")

    @classmethod
    def for_calls(cls, family: str, solver: str, calls: int, first_step: str = NETWORK, **kw: float) -> GridSpec:
        """The grid on which ``solver`` makes exactly ``calls`` network calls with ``first_step``: ``for_nfe``
        for the network's; one evaluation more for ``analytic`` (the Gaussian answers the first); one grid
        step more for ``flowmap`` (the Gaussian's flow map takes it)."""
        if first_step not in FIRST_STEPS:
            raise ValueError(f"unknown first step {first_step!r}; choose one of {list(FIRST_STEPS)}")
        if first_step == "network" or isinstance(calls, bool) or not isinstance(calls, int):
            return cls.for_nfe(family, solver, calls, **kw)
        if first_step == "analytic":
            return cls.for_nfe(family, solver, calls + 1, **kw)
        return cls(family, cls.for_nfe(family, solver, calls, **kw).steps + 1, **kw)

    def sigmas(self, denoiser: Denoiser | None = None) -> Tensor:
        """The grid as a float64 sigma vector ending in 0."""
        if self.family == "explicit":
            return torch.tensor(self.values, dtype=torch.float64)
        if self.family == "flow":
            if not hasattr(denoiser, "flow_sigmas"):
                raise ValueError("grid family 'flow' needs a flow-matching model (FlowDenoiser); use 'karras'")
            return denoiser.flow_sigmas(self.steps)
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
        """The spec as JSON; ``values`` only for explicit grids (so family grids serialise as before)."""
        data = asdict(self)
        if self.family != "explicit":
            del data["values"]
        else:
            data["values"] = list(self.values)
        return data
