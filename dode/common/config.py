"""The frozen-configuration base: configurations are validated by constructing them, and bad input becomes one
ValueError naming each bad field (``build``). Booleans and integers are strict (``Flag``, ``Int``, ``Count``):
"false", "no" or 1 are not a boolean, 1.0 or true not an integer (a YAML ``factor: yes`` is refused, not 1);
numbers (``Number``) take integers and floats, finite."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)

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


Flag = StrictBool  # True or False only
Int = StrictInt  # an int, never a bool, a float or a string
Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]  # an int or a float, finite; never a bool or a string
Count = Annotated[StrictInt, Field(ge=1, le=MAX_SAMPLES)]
WHOLE_ITEMS = {"x-whole-items": True}  # an array field's json_schema_extra: its items may hold commas (a prompt)
