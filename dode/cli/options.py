"""Command-line options derived from a configuration class: names, types, choices, defaults and descriptions
declared once there, the same option names for every command that takes it (``dode run STAGE``, ``dode sample``,
``dode gaussian``, ``dode distill-pipeline``).

A field is ``--field``, a field of a part is ``--part-field`` (``--teacher-factor``, ``--fit-objective``,
``--sampling-n-samples``); an option left out takes the configuration's default. A choice (a ``Literal``) lists
its choices; a boolean is ``--flag`` / ``--no-flag``; an array takes items, space- or comma-separated, and also
its singular name (``--nfe 3 5`` or ``--nfe 3,5`` for ``nfes``; space-separated only where the field says its items
may hold commas, ``dode.common.config.WHOLE_ITEMS``: ``--prompts "a cat, asleep" "a dog"``); a mapping takes KEY=VALUE items
(``--nfes-by-solver heun=3,5,7``) or one JSON object (``--fit-options '{"iterations": 40}'``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from dode.common.bounded import load_json
from dode.common.config import WHOLE_ITEMS

SCALARS: dict[str, Callable[[str], Any]] = {"string": str, "integer": int, "number": float}  # JSON schema types


def config_options(config: type[BaseModel], prefix: str = "") -> list[tuple[str, dict, dict, bool]]:
    """(option dest, JSON schema, the schemas beside it, required) for every field of ``config``, its parts'
    recursively; a part's field's dest is ``part.field``."""
    schema = config.model_json_schema()["properties"]
    out = []
    for name, field in config.model_fields.items():
        part = field.annotation
        if isinstance(part, type) and issubclass(part, BaseModel):
            out += config_options(part, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", schema[name], schema, field.is_required()))
    return out


def add_config_options(p: argparse.ArgumentParser, config: type[BaseModel]) -> None:
    """One option per field of ``config`` (a part's fields prefixed with its name)."""
    for dest, prop, siblings, required in config_options(config):
        add_option(p, dest, prop, siblings, required)


def config_mapping(args: argparse.Namespace, config: type[BaseModel]) -> dict[str, Any]:
    """The options of ``config`` given on the command line (``add_config_options``), nested by part: the mapping
    ``dode.common.config.build`` makes the configuration from (the others take its defaults)."""
    given = vars(args)
    return nest({dest: given[dest] for dest, *_ in config_options(config) if dest in given})


def nest(options: dict[str, Any]) -> dict[str, Any]:
    """Options by dest (``part.field``) as a mapping of fields, the parts' nested."""
    out: dict[str, Any] = {}
    for dest, value in options.items():
        *parts, name = dest.split(".")
        target = out
        for part in parts:
            target = target.setdefault(part, {})
        target[name] = value
    return out


def add_option(p: argparse.ArgumentParser, dest: str, prop: dict, siblings: dict, required: bool = False) -> None:
    """``--dest`` (dots and underscores as dashes), with its singular name for an array whose singular is free."""
    name = dest.rpartition(".")[2]
    flags = [f"--{dest.replace('.', '-').replace('_', '-')}"]
    if name.endswith("s") and name[:-1] not in siblings and "array" in types(prop):
        flags.append(f"--{dest[:-1].replace('.', '-').replace('_', '-')}")
    default = "" if prop.get("default") is None else f" (default: {json.dumps(prop['default'])})"
    settings = {"metavar": name.upper(), **option(dest, prop)}
    choices = "" if settings.get("choices") is None else f" (choices: {', '.join(map(str, settings['choices']))})"
    if settings.get("action") is argparse.BooleanOptionalAction:
        del settings["metavar"]
    p.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, required=required,
                   help=f"{prop.get('description') or ''}{choices}{default}", **settings)


def types(prop: dict) -> dict[str, dict]:
    """A parameter's JSON schema types (null left out; a model is an object): type name -> its schema."""
    kinds = {}
    for s in prop.get("anyOf", [prop]):
        kind = s.get("type") or ("object" if "$ref" in s else None)
        if kind not in (None, "null"):
            kinds[kind] = s
    return kinds


def option(name: str, prop: dict) -> dict[str, Any]:
    """argparse settings for one parameter of JSON schema ``prop``."""
    kinds = types(prop)
    if len(kinds) != 1:
        raise ValueError(f"parameter {name!r} has types {sorted(kinds)}; a command-line option takes one type")
    (kind, schema), = kinds.items()
    if kind == "boolean":
        return {"action": argparse.BooleanOptionalAction}
    if kind == "array":
        items = schema.get("items", {})
        return {"nargs": "+", "action": Items, "type": SCALARS[items.get("type", "string")],
                "choices": items.get("enum"), "split": not WHOLE_ITEMS.items() <= prop.items()}
    if kind == "object":
        return {"nargs": "+", "action": Merge, "metavar": "KEY=VALUE", "type": key_value(schema)}
    return {"type": SCALARS[kind], **({"choices": schema["enum"]} if "enum" in schema else {})}


class Items(argparse.Action):
    """An array option: its items, space- or comma-separated (space-separated only, ``split`` False), each converted
    (and checked against the choices)."""

    def __init__(self, *args: Any, type: Callable[[str], Any] = str, choices: Sequence[Any] | None = None,
                 split: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.item, self.item_choices, self.split = type, choices, split

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items, texts = [], [v for value in values for v in value.split(",") if v != ""] if self.split else values
        for text in texts:
            try:
                item = self.item(text)
            except ValueError:
                parser.error(f"argument {option_string}: invalid {self.item.__name__} value: {text!r}")
            if self.item_choices is not None and item not in self.item_choices:
                parser.error(f"argument {option_string}: invalid choice: {text!r} (choose from "
                             f"{', '.join(map(str, self.item_choices))})")
            items.append(item)
        setattr(namespace, self.dest, items)


class Merge(argparse.Action):
    """A mapping option: its items (repeated options too) merged into one dict."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        merged = dict(getattr(namespace, self.dest, None) or {})
        for items in values:
            merged.update(items)
        setattr(namespace, self.dest, merged)


def key_value(schema: dict) -> Callable[[str], dict[str, Any]]:
    """Parse ``KEY=VALUE`` (a list value: comma-separated items) or one JSON object into a dict."""
    values = schema.get("additionalProperties")
    values = values if isinstance(values, dict) else {}  # True: any value

    def value(text: str) -> Any:
        if values.get("type") == "array":
            return [SCALARS[values.get("items", {}).get("type", "string")](v) for v in text.split(",")]
        if values.get("type") in SCALARS:
            return SCALARS[values["type"]](text)
        try:
            return load_json(text, "the value")
        except ValueError:
            return text

    def parse(text: str) -> dict[str, Any]:
        try:
            if text.lstrip().startswith("{"):
                return dict(load_json(text, "the JSON object"))
            key, raw = text.split("=", 1)
            return {key: value(raw)}
        except ValueError as err:
            why = f" ({err})" if text.lstrip().startswith("{") else ""
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. heun=3,5,7,9) or a JSON object{why}, "
                                             f"got {text[:80]!r}") from None

    return parse


__all__ = ["add_config_options", "add_option", "config_mapping", "config_options", "nest"]
