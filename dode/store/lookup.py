"""Lookup: artifacts by id, id prefix, kind, key and params, and their lineage (``Registry``'s reading of manifests).

Every manifest read is parsed strictly (``dode.store.manifest.parse_manifest``) and remembered per registry
(``manifests``; what failed, and why, in ``broken``). By kind and key, an indexed registry reads only the
manifests its key index names (``dode.store.key_index``); lineage follows parents by id; an id prefix, a
fuzzy hint and ``find(kind)`` without a key list every manifest.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from dode.common.bounded import MAX_JSON_BYTES
from dode.store.key_index import entry_ids, is_indexed
from dode.store.manifest import (
    HEX64,
    KINDS,
    Artifact,
    canonical_json,
    manifest_key,
    parse_manifest,
)
from dode.store.storage import Refused


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; choose one of {list(KINDS)}")
    return kind


class Lookup:
    """The finding half of ``Registry`` (it provides ``storage``, ``uri``, ``manifests``, ``broken``, ``indexed``)."""

    def is_indexed(self) -> bool:
        """Whether the key index covers every artifact (read once per registry; ``key_index.is_indexed``)."""
        if self.indexed is None:
            self.indexed = is_indexed(self.storage)
        return self.indexed

    def load(self, id: str) -> Artifact | None:
        """The artifact ``id`` when its manifest exists and is sound; None otherwise (problems in ``broken``)."""
        if id in self.manifests:
            return self.manifests[id]
        try:
            raw = self.storage.read(manifest_key(id), MAX_JSON_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, Refused) as err:
            self.broken[id] = [f"manifest is unreadable ({err})"]
            return None
        return self.parsed(id, raw)

    def parsed(self, id: str, raw: bytes) -> Artifact | None:
        art, problems = parse_manifest(id, raw)
        if art is None:
            self.broken[id] = problems
            return None
        self.manifests[id] = art
        self.broken.pop(id, None)
        return art

    def exists(self, id: str) -> bool:
        return id in self.manifests or self.storage.exists(manifest_key(id))

    def load_many(self, ids: list[str]) -> list[Artifact]:
        """The sound artifacts among ``ids``, the manifests not yet read fetched in one request."""
        unknown = [i for i in ids if i not in self.manifests]
        if unknown:
            for key, raw in self.storage.read_many((manifest_key(i) for i in unknown), MAX_JSON_BYTES).items():
                self.parsed(key.split("/")[1], raw)
        return [self.manifests[i] for i in ids if i in self.manifests]

    def ids(self) -> list[str]:
        """Ids of every complete, sound artifact (broken manifests are kept in ``broken``, see ``verify``)."""
        dirs = [d for d in self.storage.listdir("artifacts") if HEX64.fullmatch(d)]
        return sorted(a.id for a in self.load_many(dirs))

    def list(self, kind: str | None = None) -> list[Artifact]:
        """Every artifact (of ``kind``), oldest first."""
        if kind is not None:
            check_kind(kind)
        arts = [self.manifests[i] for i in self.ids()]
        return sorted((a for a in arts if kind is None or a.kind == kind), key=lambda a: (a.created, a.id))

    def find(self, kind: str, key: str | None = None, **params: Any) -> list[Artifact]:
        """Artifacts of ``kind`` (with ``key``) whose params include ``params``, newest first.

        With ``key``, in an indexed registry, only the manifests the key index names are read (``key_index``);
        entries naming a missing or broken manifest, or one of another kind or key, are ignored."""
        want = json.loads(canonical_json(params))
        if key is None or not self.is_indexed():
            arts = self.list(kind)
        else:
            arts = sorted((a for a in self.load_many(entry_ids(self.storage, check_kind(kind), key))
                           if a.kind == kind), key=lambda a: (a.created, a.id))
        hits = [a for a in arts if (key is None or a.key == key) and all(a.params.get(k) == v for k, v in want.items())]
        return hits[::-1]

    def find_intact(self, kind: str, key: str | None = None, **params: Any) -> list[Artifact]:
        """``find``, keeping only artifacts whose every file verifies (``intact``): what a step reuses instead of
        computing, so a damaged result is computed again and republishing it repairs the registry."""
        return [a for a in self.find(kind, key, **params) if self.intact(a.id)]

    def refuse(self, id: str) -> ValueError:
        return ValueError(f"artifact {id[:12]} in {self.uri} is refused: {'; '.join(self.broken[id])}; "
                          "run `dode artifacts verify` (republishing the same content repairs it)")

    def get(self, ref: str | Artifact) -> Artifact:
        """The artifact with this id or unique id prefix, its manifest verified; a ValueError otherwise."""
        if isinstance(ref, Artifact):
            return ref
        ref = str(ref).strip().lower()
        if HEX64.fullmatch(ref):
            if self.load(ref) is not None:
                return self.manifests[ref]
            if ref in self.broken:
                raise self.refuse(ref)
        ids = self.ids() if ref else []
        hits = [i for i in ids if i.startswith(ref)] if ref else []
        if len(hits) == 1:
            return self.manifests[hits[0]]
        if hits:
            listing = "\n  ".join(self.manifests[i].line() for i in hits[:10])
            raise ValueError(f"artifact id prefix {ref!r} is ambiguous in {self.uri}; give more characters:\n  {listing}")
        bad = [i for i in self.broken if ref and i.startswith(ref)]
        if bad:
            raise self.refuse(bad[0])
        close = difflib.get_close_matches(ref, [i[: len(ref)] for i in ids], n=5, cutoff=0.5)
        near = [self.manifests[i] for i in ids if i[: len(ref)] in close]
        near += [a for a in (self.manifests[i] for i in ids) if ref and ref in a.key.lower() and a not in near]
        hint = "close matches:\n  " + "\n  ".join(a.line() for a in near[:5]) if near else "see `dode artifacts list`"
        raise ValueError(f"no artifact {ref!r} in registry {self.uri}; {hint}")

    def lineage(self, ref: str | Artifact) -> list[Artifact]:
        """The artifact, then its parents, theirs, ... down to the model (depth first, each once)."""
        out: list[Artifact] = []
        todo = [self.get(ref)]
        while todo:
            art = todo.pop()
            if any(a.id == art.id for a in out):
                continue
            out.append(art)
            for parent in reversed(art.parents):
                found = self.load(parent)
                if found is None:
                    raise self.refuse(parent) if parent in self.broken else ValueError(
                        f"artifact {art.short} names parent {parent[:12]}, which is not in {self.uri}")
                todo.append(found)
        return out
