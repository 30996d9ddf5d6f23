"""Artifact manifests: the pure half of the registry (no I/O): ids, file names and strict parsing.

An artifact's id is the sha256 of the canonical JSON of (kind, key, params, parents, every file's
sha256), so a manifest whose content does not hash to its directory's id has been edited or corrupted.
``parse_manifest`` is the only way a manifest becomes an ``Artifact``: it reports every problem (bad
JSON, missing or mistyped keys, unsafe file names, a wrong id) instead of raising on the first one.

Registry JSON is hostile input: it is parsed by ``dode.common.bounded.load_json`` (size, nesting and numbers
bounded before use), and ``printable`` escapes what a manifest says before it
reaches a terminal (a forged key cannot print a fake line or move the cursor).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dode.common.bounded import load_json
from dode.version import __version__

KINDS = ("trajectory", "lambdas", "samples", "reference-stats", "score", "report", "model", "gaussian")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
HEX64 = re.compile(r"[0-9a-f]{64}")
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
FIELDS = {"id": str, "kind": str, "key": str, "params": dict, "parents": list, "provenance": dict, "files": dict,
          "created": str}


@dataclass(frozen=True)
class Artifact:
    """One published artifact, as its manifest describes it; ``files`` maps name -> {sha256, size}."""

    id: str
    kind: str
    key: str
    params: dict[str, Any]
    parents: tuple[str, ...]
    provenance: dict[str, Any]
    files: dict[str, dict[str, Any]]
    created: str

    @property
    def short(self) -> str:
        return self.id[:12]

    def line(self) -> str:
        """One line for listings: id first, then kind, key, date and what tells two artifacts of one key apart
        (``details``), all escaped (``printable``)."""
        details = "  ".join(f"{name}={value}" for name, value in self.details().items())
        return printable(f"{self.id}  {self.kind:<15} {self.key}  {self.created}" + (f"  {details}" if details else ""))

    def details(self) -> dict[str, str]:
        """What tells two artifacts of the same key apart in a listing: a lambdas' objective, its options and
        first step (compact JSON), from the manifest's params."""
        if self.kind != "lambdas":
            return {}
        fit = self.params.get("fit") if isinstance(self.params.get("fit"), dict) else {}
        found = {"objective": fit.get("objective"), "options": fit.get("options") or None,
                 "first_step": self.params.get("first_step")}
        return {name: value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
                for name, value in found.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"manifest_version": MANIFEST_VERSION, **asdict(self), "parents": list(self.parents)}


def manifest_key(id: str) -> str:
    """Where artifact ``id``'s manifest lives, relative to the registry root."""
    return f"artifacts/{id}/{MANIFEST}"


def file_key(id: str, name: str) -> str:
    """Where file ``name`` of artifact ``id`` lives, relative to the registry root."""
    return f"artifacts/{id}/files/{name}"


def printable(text: str) -> str:
    """``text`` for a terminal: control characters, line separators and bidirectional overrides escaped
    (``\\x1b``, ``\\u202e``), so what a manifest or file name says is printed, never executed."""
    return UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces); a ValueError for anything JSON cannot hold."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"artifact params must be plain JSON (str, int, float, bool, None, lists, dicts): {err}") from None


def artifact_id(kind: str, key: str, params: Mapping[str, Any], parents: Sequence[str], hashes: Mapping[str, str]) -> str:
    """sha256 over kind, key, params, parents and every file's sha256."""
    body = {"kind": kind, "key": key, "params": params, "parents": list(parents), "files": dict(hashes)}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def check_name(name: Any) -> str:
    """A file name inside an artifact: a relative POSIX path without '.', '..', empty parts or backslashes."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name or name.startswith("/"):
        raise ValueError(f"artifact file name {name!r} must be a relative path like 'data.json' or 'unet/config.json'")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"artifact file name {name!r} must be a relative path like 'data.json' or 'unet/config.json'")
    return name


def clash(names: Sequence[str]) -> str | None:
    """A name that is also a folder of another name (``a`` and ``a/b``), which no file system holds; None if none."""
    folders = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
    return next((n for n in sorted(names) if n in folders), None)


def expand_files(files: Mapping[str, Path | bytes]) -> dict[str, Path | bytes]:
    """Validate names; a directory becomes every file under it, named '<name>/<relative path>'.

    Symbolic links are refused: an artifact holds bytes, never a pointer to somewhere else.
    """
    if not files:
        raise ValueError("an artifact needs at least one file: files={'name': path_or_bytes}")
    out: dict[str, Path | bytes] = {}
    for name, content in files.items():
        name = "/".join(PurePosixPath(check_name(name)).parts)
        if isinstance(content, (bytes, bytearray, memoryview)):
            out[name] = bytes(content)
            continue
        path = Path(content) if isinstance(content, (str, os.PathLike)) else None
        if path is not None and path.is_symlink():
            raise ValueError(f"file {name!r}: {path} is a symbolic link; publish the file it points to")
        if path is not None and path.is_dir():
            for sub in sorted(path.rglob("*")):
                if sub.is_symlink():
                    raise ValueError(f"file {name!r}: {sub} is a symbolic link; publish the file it points to")
                if sub.is_file():
                    out[f"{name}/{sub.relative_to(path).as_posix()}"] = sub
        elif path is not None and path.is_file():
            out[name] = path
        else:
            raise ValueError(f"file {name!r}: {content!r} is neither bytes nor an existing file or directory")
    both = clash(list(out))
    if both is not None:
        raise ValueError(f"file {both!r} is also a folder of other files; name them apart")
    return out


def file_problems(files: Any) -> list[str]:
    """What is wrong with a manifest's ``files``: empty, unsafe names, entries without a sha256 and size."""
    if not isinstance(files, dict) or not files:
        return ["'files' must be a non-empty object of name -> {sha256, size}"]
    problems = []
    for name, entry in files.items():
        try:
            check_name(name)
        except ValueError as err:
            problems.append(f"unsafe {err}")
        if not isinstance(entry, dict) or set(entry) != {"sha256", "size"}:
            problems.append(f"file {name!r}: entry must be {{sha256, size}}, got {entry!r:.80}")
        elif not (isinstance(entry["sha256"], str) and HEX64.fullmatch(entry["sha256"])):
            problems.append(f"file {name!r}: sha256 must be 64 lowercase hex digits")
        elif not (type(entry["size"]) is int and entry["size"] >= 0):
            problems.append(f"file {name!r}: size must be a non-negative integer")
    both = clash([n for n in files if isinstance(n, str)])
    if both is not None:
        problems.append(f"file {both!r} is also a folder of other files (no file system holds both)")
    return problems


def field_problems(data: dict[str, Any]) -> list[str]:
    """Missing, unknown and mistyped top-level keys; the kind and the parents' ids."""
    problems = []
    if data.get("manifest_version") != MANIFEST_VERSION:
        problems.append(f"manifest version {data.get('manifest_version')!r}, this dode {__version__} reads "
                        f"{MANIFEST_VERSION}; upgrade dode to read this registry")
    missing = sorted(set(FIELDS) - set(data))
    unknown = sorted(set(data) - set(FIELDS) - {"manifest_version"})
    if missing or unknown:
        problems.append(f"missing keys {missing}, unknown keys {unknown}")
    problems += [f"{k!r} must be a JSON {t.__name__}" for k, t in FIELDS.items() if k in data and not isinstance(data[k], t)]
    if isinstance(data.get("kind"), str) and data["kind"] not in KINDS:
        problems.append(f"unknown kind {data['kind']!r}")
    if isinstance(data.get("parents"), list) and not all(isinstance(p, str) and HEX64.fullmatch(p) for p in data["parents"]):
        problems.append("'parents' must be artifact ids (64 hex digits)")
    return problems


def parse_manifest(id: str, raw: bytes) -> tuple[Artifact | None, list[str]]:
    """(the artifact, []) for a sound manifest of artifact ``id``; (None, every problem found) otherwise."""
    try:
        data = load_json(raw, "manifest")
    except ValueError as err:
        return None, [str(err)]
    if not isinstance(data, dict):
        return None, [f"manifest must be a JSON object, got a {type(data).__name__}"]
    problems = field_problems(data) + file_problems(data.get("files"))
    if problems:
        return None, problems
    if data["id"] != id:
        return None, [f"manifest names id {data['id'][:12]!r}, not its directory's"]
    hashes = {name: entry["sha256"] for name, entry in data["files"].items()}
    try:
        recomputed = artifact_id(data["kind"], data["key"], data["params"], data["parents"], hashes)
    except ValueError as err:
        return None, [str(err)]
    if recomputed != id:
        return None, ["manifest does not hash to its id (edited or corrupted)"]
    data.pop("manifest_version")
    return Artifact(**{**data, "parents": tuple(data["parents"])}), []
