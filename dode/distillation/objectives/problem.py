"""What every distillation objective receives (a problem and its options) and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import SerializerFunctionWrapHandler, model_serializer

from dode.common.config import Config
from dode.core.gaussian import FirstStep
from dode.core.types import Denoiser, Tensor


@dataclass(frozen=True)
class FitProblem:
    """One distillation problem, all tensors float64 on the noise's device, on three disjoint splits of the noise.

    ``targets[k]`` is the teacher state that student evaluation k's update should reach, on the fit split
    (the last one is the teacher's final sample). ``selection_noise`` / ``selection_final``: the selection
    split, on which objectives may select iterations (never fit); empty when the guard is off or the
    objective does not select. ``heldout_noise`` / ``heldout_final``: the guard's split, empty in the
    problem an objective receives (``dode.distillation.fit.fit_guarded``), so no objective sees the noise it is
    judged on.
    ``first``: the analytic first step every sampler of this problem uses (None: the network's).
    """

    denoiser: Denoiser
    noise: Tensor
    sigmas: Tensor
    solver: str
    correction: str
    targets: tuple[Tensor, ...]
    heldout_noise: Tensor
    heldout_final: Tensor
    selection_noise: Tensor
    selection_final: Tensor
    first: FirstStep | None = None

    @property
    def final(self) -> Tensor:
        return self.targets[-1]


@dataclass(frozen=True)
class FitResult:
    """An objective's answer: ``values`` (one lambda per evaluation) on the grid ``sigmas`` (the given one,
    or a learned one), ``info`` for ``Lambdas.fit``, and ``alternatives``: other (name, values, sigmas)
    candidates the guard may pick instead, in order of preference after the result itself."""

    values: tuple[float, ...]
    sigmas: Tensor
    name: str = "fitted"
    info: dict[str, Any] = field(default_factory=dict)
    alternatives: tuple[tuple[str, tuple[float, ...], Tensor], ...] = ()
    criterion: str = "mse"  # how the guard ranks candidates: held-out "mse" or Frechet distance "fd"


class Options(Config):
    """An objective's options: a typed, frozen model beside the objective (``FinalOptions``), the type of the
    objective's ``options`` parameter; an objective without that parameter takes none (this empty model).
    Serialised with the options given only, as fits record them and registry keys hold them."""

    @model_serializer(mode="wrap")
    def _given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {name: value for name, value in handler(self).items() if name in self.model_fields_set}
