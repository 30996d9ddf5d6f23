"""How lambdas are fitted (``FitConfig``), validated by constructing it: one set of rules, one set of defaults;
and the typed choices every configuration names (``Solver``, ``Family``, ``FirstStepKind``, ``ObjectiveName``,
``ModelName``) with the defaults they share (``STUDENT_SOLVER``, ``FAMILY``, ``FIRST_STEP``).

The parts the library takes -- ``TeacherConfig`` (``dode.distillation.teacher``: how targets are made),
``FitConfig`` (here) and ``SamplingConfig`` (``dode.pipeline.generate``: large-batch sampling) -- are built once,
from Python (``dode.distill(..., teacher=, fit=)`` also takes mappings of their fields), from ``dode run``'s
options or from a deployment's parameters, and carried unchanged to the library. The stage configurations that
the flows take (``dode.pipeline.runs``) hold them with the model and the cells.

The choices are ``Literal`` types drawn from the registries (``dode.core.solvers.SOLVERS``,
``dode.core.grids.FAMILIES``, ``dode.core.gaussian.FIRST_STEPS``, ``dode.distillation.objectives.OBJECTIVES``)
when this module is imported, so Prefect's run form shows them as choices: a solver or objective registered at
run time must be registered before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from dode.common.config import Config, Count, Flag, Number, checked
from dode.core.correction import CORRECTIONS
from dode.core.gaussian import FIRST_STEPS, NETWORK
from dode.core.grids import FAMILIES
from dode.core.rng import MAX_SEED
from dode.core.solvers import DEFAULT_SOLVER, SOLVERS
from dode.distillation.objectives import OBJECTIVES, Options, objective_options, options_model
from dode.models import check_model_name

Seed = Annotated[int, Field(ge=0, le=MAX_SEED, strict=True)]
Solver = Literal[tuple(SOLVERS)]
Family = Literal[tuple(f for f in FAMILIES if f != "explicit")]  # an explicit grid is given by its sigmas
FirstStepKind = Literal[FIRST_STEPS]
ObjectiveName = Literal[tuple(OBJECTIVES)]
ObjectiveOptions = Union[tuple(dict.fromkeys(options_model(name) for name in OBJECTIVES))]  # noqa: UP007
ModelName = Annotated[str, checked(check_model_name)]

STUDENT_SOLVER: Solver = DEFAULT_SOLVER  # the base solver a student uses unless told (dode.core.solvers)
FAMILY: Family = "karras"  # the student grid family unless told
FIRST_STEP: FirstStepKind = NETWORK  # the first evaluation by the network unless told


class SeededBatches(Config):
    """``n_samples`` seeded samples from seed ``first_seed`` on, made in batches of ``batch_size``: the seeds
    stay within 0 .. MAX_SEED (the one seed-range rule of every configuration that draws seeded samples)."""

    n_samples: Count = Field(1000, description="samples, from seed first_seed on")
    first_seed: Seed = Field(0, description="first seed of the samples")
    batch_size: Count = Field(250, description="samples per batch and per stored chunk")

    @model_validator(mode="after")
    def _seeds(self) -> SeededBatches:
        if self.first_seed > MAX_SEED - self.n_samples:
            raise ValueError(f"first_seed must be in [0, 2**63 - 1 - n_samples]: the seeds first_seed .. first_seed "
                             f"+ n_samples stay within 0 .. {MAX_SEED}")
        return self


class ObjectiveChoice(Config):
    """An ``objective`` and its ``options``: the objective's options model (e.g. ``FinalOptions``), which a
    mapping of its fields builds (the one rule that checks objective options, before any work)."""

    objective: ObjectiveName = Field("step", description="distillation objective (dode.distillation.objectives)")
    options: ObjectiveOptions = Field(default_factory=Options, validate_default=True,
                                      description="the objective's options, e.g. iterations=150 (objective final)")

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Options | Mapping[str, Any] | None, info: ValidationInfo) -> Any:
        if "objective" not in info.data:  # a bad objective: its own error says so
            return options_model("step")()
        return objective_options(info.data["objective"], value)


class FitConfig(ObjectiveChoice):
    """How the lambdas are fitted (``dode.distill``): the objective and its options (``ObjectiveChoice``), the
    correction flavour, and the held-out guard with its splits (``dode.distillation.fit.split``)."""

    guard: Flag = Field(True, description="held-out guard on the fitted lambdas")
    holdout: Number = Field(0.5, gt=0, lt=1, description="the guard's fraction of the distillation noise")
    selection: Number = Field(0.125, gt=0, lt=1,
                              description="the selection split's fraction, for objectives that select iterations")
    correction: Literal[CORRECTIONS] = Field("data", description=f"D-ODE correction flavour: {CORRECTIONS}")


__all__ = [
    "FAMILY",
    "FIRST_STEP",
    "STUDENT_SOLVER",
    "Family",
    "FirstStepKind",
    "FitConfig",
    "ModelName",
    "ObjectiveChoice",
    "ObjectiveName",
    "ObjectiveOptions",
    "Seed",
    "SeededBatches",
    "Solver",
]
