"""Bounded reading of the JSON and YAML that dode parses: every file from a registry, a model or pipeline
folder, a download or the command line is hostile input until checked.

``load_json`` and ``load_yaml`` refuse, with one ValueError naming the document, what would exhaust the
parser or the machine before any of it is used: more than ``max_bytes``, nesting deeper than ``max_depth``
(counted by a flat scan, so a document of 100,000 brackets costs no recursion), NaN and infinities, integers
beyond 64 bits (``10**400``), YAML aliases that expand past ``MAX_YAML_NODES`` values (a "billion laughs"
document). ``check_size`` bounds a size a file asks for (timesteps, pixels, samples) before anything of that
size is allocated.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

MAX_JSON_BYTES = 16 << 20  # a document larger than this is refused unread
MAX_DEPTH = 64  # nesting of objects and arrays; dode's own documents use fewer than 10 levels
MAX_YAML_NODES = 1_000_000  # values of a YAML document, aliases expanded
MAX_INT = 2**63 - 1  # integers beyond int64 hold no size, seed or count dode uses
JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped) and brackets


def read_bounded(source: bytes | str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of ``source`` (bytes, text, or a file's path, read at most ``max_bytes`` + 1 bytes)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
    elif isinstance(source, str):
        raw = source.encode()
    else:
        with open(source, "rb") as f:
            raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ValueError(f"{what} is larger than {max_bytes} bytes; dode refuses it unread")
    return raw


def check_depth(raw: bytes, what: str, max_depth: int) -> None:
    """One ValueError when the brackets of a JSON (or flow-style YAML) document nest deeper than ``max_depth``."""
    depth = 0
    for token in JSON_TOKENS.finditer(raw):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise ValueError(f"{what} nests deeper than {max_depth} levels")
        elif bracket in (b"]", b"}"):
            depth -= 1


def bounded_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > 19 or abs(int(text)) > MAX_INT:
        raise ValueError(f"integer {text[:24]}{'...' * (len(text) > 24)} is beyond 64 bits")
    return int(text)


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]} is beyond float64's range")
    return value


def no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a finite number")


def load_json(source: bytes | str | os.PathLike, what: str | None = None, *, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON from bytes, text or a file, bounded (see the module): one ValueError saying ``what`` (default:
    the file's path) is wrong when it is too large, too deep, not JSON (UTF-8), or holds NaN, infinities or
    integers beyond 64 bits."""
    import json

    what = what or (str(source) if isinstance(source, os.PathLike) else "the document")
    raw = read_bounded(source, what, max_bytes)
    check_depth(raw, what, max_depth)
    try:
        return json.loads(raw, parse_int=bounded_int, parse_float=finite_float, parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{what} is not valid JSON ({err})") from None


def load_yaml(source: bytes | str | os.PathLike, what: str | None = None, *, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_DEPTH, max_nodes: int = MAX_YAML_NODES) -> Any:
    """Parse YAML (safe: plain data only) from bytes, text or a file, with ``load_json``'s bounds, and at most
    ``max_nodes`` values once aliases are expanded (a "billion laughs" document is refused). Depth and nodes are
    counted on the parser's events (a flat stream) before any node is built."""
    import yaml

    what = what or (str(source) if isinstance(source, os.PathLike) else "the document")
    raw = read_bounded(source, what, max_bytes)
    try:
        check_yaml_events(yaml.parse(raw, Loader=yaml.SafeLoader), what, max_depth, max_nodes)
        data = yaml.safe_load(raw)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{what} is not valid YAML ({' '.join(str(err).split())})") from None
    check_numbers(data, what)
    return data


def check_yaml_events(events: Any, what: str, max_depth: int, max_nodes: int) -> None:
    """One ValueError when YAML ``events`` nest deeper than ``max_depth`` or expand to more than ``max_nodes``
    values (an alias counts the values of its anchor)."""
    import yaml

    sizes: dict[str, int] = {}  # anchor -> values under it
    open_: list[list[Any]] = [[None, 0]]  # (anchor, values so far) of each open collection, the document's first
    for event in events:
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            open_.append([event.anchor, 1])
            if len(open_) - 1 > max_depth:
                raise ValueError(f"{what} nests deeper than {max_depth} levels")
            continue
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, count = open_.pop()
        elif isinstance(event, yaml.AliasEvent):
            anchor, count = None, sizes.get(event.anchor, 1)
        elif isinstance(event, yaml.ScalarEvent):
            anchor, count = event.anchor, 1
        else:
            continue
        if anchor:
            sizes[anchor] = count
        open_[-1][1] += count
        if sum(c for _, c in open_) > max_nodes:
            raise ValueError(f"{what} expands to more than {max_nodes:,} values (YAML aliases of aliases?)")


def check_numbers(data: Any, what: str) -> None:
    """One ValueError when parsed data holds a non-finite float or an integer beyond 64 bits (walked without
    recursion)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple)):
            stack += item
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{what} holds {item}, not a finite number")
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INT:
            raise ValueError(f"{what} holds an integer beyond 64 bits")


def machine_bytes() -> int:
    """The physical memory of this machine, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_size(what: str, value: Any, bound: int, why: str) -> int:
    """``value`` when it is an integer in 1..``bound``; else one ValueError giving the bound and ``why``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
        raise ValueError(f"{what} must be an integer in 1..{bound:,} ({why}), got {value!r:.40}")
    return value

