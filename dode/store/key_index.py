"""The registry's key index: artifacts found by kind and key without listing every manifest.

Layout under the registry root (this module owns it)::

    index/index.json                 {"index_version": 1}: every artifact has its entry (see below)
    index/<kind>/<sha256(key)>/<id>  one empty marker per artifact

``find(kind, key)`` lists one prefix and reads only the manifests it names. Publishing writes the entry
before the manifest, so an artifact is never visible without its entry; a publish that dies in between
leaves an entry naming no artifact, which lookups ignore (republishing completes it). Entries are untrusted
(a shared bucket or NFS): one whose manifest is missing, broken, or of another kind or key is ignored, and
``verify`` reports it. A registry written before the index (no ``index/index.json``) is still found, by
listing every manifest, until ``reindex`` (``dode artifacts reindex``) writes the missing entries and the
marker; a new registry gets the marker with its first artifact.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dode.common.bounded import load_json
from dode.store.manifest import HEX64, KINDS, Artifact, printable

INDEX_VERSION = 1
INDEX_FILE = "index/index.json"


def entry_prefix(kind: str, key: str) -> str:
    """The folder of the entries of every artifact of ``kind`` with ``key``."""
    return f"index/{kind}/{hashlib.sha256(key.encode()).hexdigest()}"


def entry_key(art: Artifact) -> str:
    return f"{entry_prefix(art.kind, art.key)}/{art.id}"


def is_indexed(storage: Any) -> bool:
    """Whether the registry's marker says every artifact has its entry (a marker of another version: no)."""
    try:
        marker = load_json(storage.read(INDEX_FILE, 4096), INDEX_FILE)
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("index_version") == INDEX_VERSION


def mark_indexed(storage: Any) -> None:
    storage.commit(json.dumps({"index_version": INDEX_VERSION}).encode(), INDEX_FILE)


def add_entry(storage: Any, art: Artifact) -> None:
    """Write ``art``'s entry unless it is there (before its manifest, when publishing)."""
    if not storage.exists(entry_key(art)):
        storage.commit(b"", entry_key(art))


def entry_ids(storage: Any, kind: str, key: str) -> list[str]:
    """The ids the index names for ``kind`` and ``key`` (untrusted: the caller checks each manifest)."""
    return [name for name in storage.listdir(entry_prefix(kind, key)) if HEX64.fullmatch(name)]


def reindex(reg: Any) -> int:
    """Write the entry of every artifact that lacks one, then the marker; returns the entries written."""
    reg.check_writable()
    written = 0
    for art in reg.list():
        if not reg.storage.exists(entry_key(art)):
            add_entry(reg.storage, art)
            written += 1
    mark_indexed(reg.storage)
    reg.indexed = True
    return written


def index_problems(reg: Any, ids: list[str]) -> list[str]:
    """What is wrong with the index of a registry whose artifacts (with a manifest) are ``ids``: a missing marker,
    sound artifacts without an entry, entries naming no artifact or one of another kind or key. Not problems: the
    entry of an artifact whose manifest is broken (that artifact's own report says so) or not yet written (an
    unfinished publish, invisible like its folder)."""
    arts = [reg.manifests[i] for i in ids if i in reg.manifests]
    fix = "run `dode artifacts reindex`"
    problems = [] if not arts or is_indexed(reg.storage) else [
        f"index: no {INDEX_FILE}: lookups by key list every manifest; {fix}"]
    entries = {name for name, what in reg.storage.walk("index").items() if what == "file"} - {"index.json"}
    expected = {entry_key(a)[len("index/"):] for a in arts}
    problems += [f"artifact {a.short}: no key index entry (lookups by key miss it); {fix}" for a in arts
                 if entry_key(a)[len("index/"):] not in entries]
    broken = set(ids) - {a.id for a in arts}
    for name in sorted(entries - expected):
        parts = name.split("/")
        named = parts[-1] if len(parts) == 3 and parts[0] in KINDS and HEX64.fullmatch(parts[-1]) else None
        if named in broken or (named not in ids and named and reg.storage.kind(f"artifacts/{named}") == "dir"):
            continue
        what = (f"names artifact {named[:12]}, which is not in the registry with that kind and key" if named
                else "is not <kind>/<sha256 of key>/<id>")
        problems.append(f"index/{printable(name)}: {what}; lookups ignore it: remove it")
    return problems
