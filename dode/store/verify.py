"""``Registry.verify`` (``dode artifacts verify``): every problem of a registry, reported, never raised.

Per artifact: a manifest that is not JSON, lacks or mistypes a key, holds an unsafe file name or does
not hash to its id; each file missing, a symbolic link, or failing its size or sha256 check (always
re-hashed); entries under ``files/`` the manifest does not list; missing parents. For the whole
registry also entries of ``artifacts/`` that are not ids, symbolic links where a folder belongs
(``artifacts/`` itself, an artifact folder, ``staging/``: nothing behind them is read or counted as the
registry's), the key index's gaps and stray entries (``dode.store.key_index.index_problems``), and stale
partial files in ``staging/``.
An artifact directory without a manifest is an unfinished publish: invisible, and not a problem.
"""

from __future__ import annotations

from typing import Any

from dode.store.key_index import index_problems
from dode.store.manifest import HEX64, Artifact, printable
from dode.store.staging import staging_problem

WHAT = {"link": "a symbolic link", "file": "a file", "other": "a special file", None: "missing"}


def complete(reg: Any) -> tuple[list[str], list[str]]:
    """(ids of artifact directories holding a manifest, problems with ``artifacts/`` and its other entries)."""
    top = reg.storage.kind("artifacts")
    if top not in (None, "dir"):
        why = f"artifacts: is {WHAT[top]}, not a folder; the registry reads nothing behind it: replace it with the folder"
        return [], [why]
    ids, problems = [], []
    for name in reg.storage.listdir("artifacts"):
        if not HEX64.fullmatch(name):
            problems.append(f"artifacts/{printable(name)}: not an artifact id (64 hex digits); remove it")
        elif reg.local and (kind := reg.storage.kind(f"artifacts/{name}")) != "dir":  # object stores hold no links
            problems.append(f"artifact {name[:12]}: its folder is {WHAT[kind]}; the registry reads nothing behind "
                            "it: replace it with the folder itself")
        elif reg.storage.kind(reg.manifest_key(name)) is not None:  # a link there is reported by verify_one
            ids.append(name)
    return ids, problems


def target(reg: Any, ref: str | Artifact, ids: list[str]) -> str:
    """The one id ``ref`` names among ``ids`` (sound or not); ``reg.get``'s error otherwise."""
    if isinstance(ref, Artifact):
        return ref.id
    ref = str(ref).strip().lower()
    hits = [i for i in ids if ref and i.startswith(ref)]
    if len(hits) == 1:
        return hits[0]
    return reg.get(ref).id


def verify_one(reg: Any, id: str) -> list[str]:
    """Every problem of artifact ``id``, its manifest re-read and every file re-hashed."""
    reg.manifests.pop(id, None)
    art = reg.load(id)
    if art is None:
        return [f"artifact {id[:12]}: {p}" for p in reg.broken.get(id, ["manifest is missing"])]
    problems = []
    for name in sorted(art.files):
        why = reg.file_problem(art, name, fresh=True)
        if why:
            problems.append(f"artifact {id[:12]}: file {name!r} {why}")
    for name, kind in sorted(reg.storage.walk(f"artifacts/{id}/files").items()):
        if name not in art.files:
            what = "symbolic link" if kind == "link" else "file"
            problems.append(f"artifact {id[:12]}: unlisted {what} {name!r} in files/ (not in the manifest); remove it")
    problems += [f"artifact {id[:12]}: parent {p[:12]} is missing from the registry" for p in art.parents
                 if not reg.exists(p)]
    return problems


def verify(reg: Any, ref: str | Artifact | None = None) -> list[str]:
    """Problems of one artifact (``ref``) or of the whole registry, staging included."""
    reg.check_readable()
    ids, problems = complete(reg)
    if ref is not None:
        return verify_one(reg, target(reg, ref, ids))
    for id in ids:
        problems += verify_one(reg, id)
    problems += index_problems(reg, ids)
    staging = [staging_problem(reg.storage.staging)] if staging_problem(reg.storage.staging) else []
    return problems + staging + [printable(s.line()) for s in reg.stale()]
