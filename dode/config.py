"""Frozen configurations, validated by constructing them: one set of rules, one set of defaults.

The parts the library takes -- ``TeacherConfig`` (``dode.teacher``: how targets are made), ``FitConfig``
(how lambdas are fitted, here) and ``SamplingConfig`` (large-batch sampling, here) -- are built once, from
Python (``dode.distill(..., teacher=, fit=)`` also takes mappings of their fields), from ``dode run``'s
options or from a deployment's parameters, and carried unchanged to the library. The stage configurations
that the flows take (``dode.runs``) hold them with the model and the cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .correction import CORRECTIONS
from .objectives import check_options
from .rng import MAX_SEED

C = TypeVar("C", bound=BaseModel)
MAX_SAMPLES = 10_000_000  # far beyond any run here; protects against typos


def build(cls: type[C], value: C | Mapping[str, Any] | None) -> C:
    """``value`` as a ``cls`` configuration: itself, built from a mapping, or the defaults (None). Bad input
    raises one ValueError naming each bad field and what is wrong with it."""
    if isinstance(value, cls):
        return value
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"a {cls.__name__} is built from a mapping of its fields, got {type(value).__name__}")
    try:
        return cls.model_validate(dict(value or {}))
    except ValidationError as err:
        raise ValueError(f"{cls.__name__}: {describe(err)}") from None


def describe(err: ValidationError) -> str:
    """A pydantic ValidationError as one line: ``field.path: message`` per error (a rule spanning fields names
    none)."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: " * bool(e["loc"]) + e["msg"].removeprefix("Value error, ")
                     for e in err.errors())


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def checked(check: Any) -> Any:
    """A pydantic after-validator from a ``check(value)`` that raises ValueError."""
    def run(value: Any) -> Any:
        check(value)
        return value
    return AfterValidator(run)


Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Count = Annotated[int, Field(ge=1, le=MAX_SAMPLES)]


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
    and the held-out guard with its splits (``dode.distill.split``)."""

    guard: bool = Field(True, description="held-out guard on the fitted lambdas")
    holdout: float = Field(0.5, gt=0, lt=1, description="the guard's fraction of the distillation noise")
    selection: float = Field(0.125, gt=0, lt=1,
                             description="the selection split's fraction, for objectives that select iterations")
    correction: Literal["data", "noise"] = Field("data", description=f"D-ODE correction flavour: {CORRECTIONS}")
    objective: str = Field("step", description="distillation objective (dode.objectives), e.g. step or final")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="the objective's options, e.g. iterations=150 (objective final)")

    @model_validator(mode="after")
    def _objective(self) -> FitConfig:
        check_objective(self.objective, self.options)
        return self


class SamplingConfig(Config):
    """Large-batch sampling: ``n_samples`` seeded samples from ``first_seed`` on, in batches (and stored
    chunks) of ``batch_size``, split into ``num_shards`` shards."""

    n_samples: Count = Field(1000, description="samples, from seed first_seed on")
    first_seed: Seed = Field(0, description="first seed of the samples")
    batch_size: Count = Field(250, description="samples per batch and per stored chunk")
    num_shards: int = Field(1, ge=1, le=100_000, description="sampling shards per job")

    @model_validator(mode="after")
    def _seeds(self) -> SamplingConfig:
        if self.first_seed > MAX_SEED - self.n_samples:
            raise ValueError(f"the seeds first_seed .. first_seed + n_samples must stay within 0 .. {MAX_SEED}")
        return self



__all__ = ["MAX_SAMPLES", "Config", "Count", "FitConfig", "SamplingConfig", "Seed", "build", "check_objective",
           "checked", "describe"]
