"""The frozen-configuration base: configurations are validated by constructing them, and bad input becomes one
ValueError naming each bad field (``build``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

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


Count = Annotated[int, Field(ge=1, le=MAX_SAMPLES)]
