"""How lambdas are fitted (``FitConfig``), validated by constructing it: one set of rules, one set of defaults.

The parts the library takes -- ``TeacherConfig`` (``dode.distillation.teacher``: how targets are made),
``FitConfig`` (here) and ``SamplingConfig`` (``dode.pipeline.generate``: large-batch sampling) -- are built once,
from Python (``dode.distill(..., teacher=, fit=)`` also takes mappings of their fields), from ``dode run``'s
options or from a deployment's parameters, and carried unchanged to the library. The stage configurations that
the flows take (``dode.pipeline.runs``) hold them with the model and the cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from dode.common.config import Config
from dode.core.correction import CORRECTIONS
from dode.core.rng import MAX_SEED
from dode.distillation.objectives import check_options

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class OptionsChecked(Exception):
    """Raised by ``Probe`` when an objective first reads its problem: its own option checks have passed."""


class Probe:
    """A stand-in fit problem whose first use raises ``OptionsChecked`` (no model, no teacher needed)."""

    def __getattr__(self, name: str) -> Any:
        raise OptionsChecked(name)


def check_objective(name: str, options: Mapping[str, Any] | None) -> None:
    """The objective's option names (``check_options``) and values: the objective runs on a ``Probe`` until it
    first reads the problem, so the checks it makes of its options before fitting run now, before any work."""
    fit = check_options(name, options)
    try:
        fit(Probe(), **dict(options or {}))
    except OptionsChecked:
        return
    except TypeError as err:
        raise ValueError(f"objective {name!r}: {err}") from None


class FitConfig(Config):
    """How the lambdas are fitted (``dode.distill``): the correction flavour, the objective and its options,
    and the held-out guard with its splits (``dode.distillation.fit.split``)."""

    guard: bool = Field(True, description="held-out guard on the fitted lambdas")
    holdout: float = Field(0.5, gt=0, lt=1, description="the guard's fraction of the distillation noise")
    selection: float = Field(0.125, gt=0, lt=1,
                             description="the selection split's fraction, for objectives that select iterations")
    correction: Literal["data", "noise"] = Field("data", description=f"D-ODE correction flavour: {CORRECTIONS}")
    objective: str = Field("step", description="distillation objective (dode.distillation.objectives), e.g. step or final")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="the objective's options, e.g. iterations=150 (objective final)")

    @model_validator(mode="after")
    def _objective(self) -> FitConfig:
        check_objective(self.objective, self.options)
        return self


__all__ = ["FitConfig", "Seed", "check_objective"]
