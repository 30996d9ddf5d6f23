"""The artifact registry: immutable artifacts addressed by the sha256 of their content (``dode.store.manifest``).

Layout under the registry root (a ``Storage``: a local directory or any fsspec URL, e.g. ``s3://bucket/prefix``)::

    artifacts/<id>/files/<name>...   the artifact's files, byte for byte
    artifacts/<id>/manifest.json     kind, key, params, parents, provenance, files' sha256 and sizes
    staging/                         partial files of live writers (``dode.store.staging``)

Publishing writes every file first and the manifest last: an artifact exists exactly when its manifest
does, so a crash leaves nothing visible, and concurrent publishers of the same artifact write identical
bytes. Every read verifies: a manifest must hash to its id (else the artifact is refused), and every
file is checked against its sha256 and size (``dode.store.reads``). Provenance is what the caller passes (``Registry(provenance=...)`` and
``publish(provenance=...)``) plus the dode, Python and package versions; the registry reads no
orchestrator state.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from .manifest import (
    HEX64,
    KINDS,
    MANIFEST,
    MAX_JSON_BYTES,
    Artifact,
    artifact_id,
    canonical_json,
    expand_files,
    parse_manifest,
    printable,
)
from .reads import VerifiedReads, file_sha256
from .staging import StagingArea, Stale, collect, stale_entries
from .storage import LocalStorage, Refused, Storage, open_storage, stage

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dode" / "registry"
PACKAGES = ("torch", "numpy", "pyarrow", "diffusers", "fsspec", "s3fs", "pytorch-fid")

__all__ = ["KINDS", "Artifact", "Registry", "canonical_json", "file_sha256", "static_provenance"]


@functools.lru_cache(maxsize=1)
def static_provenance() -> dict[str, Any]:
    """dode, Python and key package versions (no environment, no subprocess)."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"dode_version": __version__, "python": sys.version.split()[0], "packages": packages}


class Registry(VerifiedReads):
    """Content-addressed artifacts in a ``Storage`` (a local directory or any fsspec URL).

    ``uri`` is required (entry points resolve the default with ``dode.store.location.registry_location``).
    ``storage_options`` go to fsspec (e.g. ``{"endpoint_url": "http://127.0.0.1:9000"}``; fsspec's
    ``FSSPEC_S3_ENDPOINT_URL`` and botocore's ``AWS_ENDPOINT_URL`` work too); ``storage`` replaces the
    storage outright (another backend). Remote files read through ``local_path`` are cached, verified,
    under ``cache_dir`` (default ``$DODE_CACHE`` or ~/.cache/dode/registry). ``provenance`` is recorded
    in every artifact this registry publishes (e.g. the flow run and code version).
    """

    def __init__(
        self,
        uri: str | os.PathLike,
        *,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        provenance: Mapping[str, Any] | None = None,
        storage: Storage | None = None,
    ) -> None:
        if uri is None or not str(uri).strip():
            raise ValueError("a Registry needs a location (a directory or an fsspec URL); entry points take the "
                             "default from dode.store.location.registry_location() ($DODE_REGISTRY, else "
                             "./dode-registry in the working directory)")
        self.uri = str(uri)
        self.cache_dir = Path(cache_dir or os.environ.get("DODE_CACHE") or DEFAULT_CACHE)
        self.storage = storage or open_storage(self.uri, dict(storage_options or {}), self.cache_dir)
        self.base_provenance = json.loads(canonical_json(dict(provenance or {})))
        self.manifests: dict[str, Artifact] = {}
        self.broken: dict[str, list[str]] = {}
        self.writable = False

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    @property
    def local(self) -> bool:
        """Whether the files are on a local (or mounted) file system."""
        return isinstance(self.storage, LocalStorage)

    # Keys and places.
    @staticmethod
    def file_key(id: str, name: str) -> str:
        return f"artifacts/{id}/files/{name}"

    @staticmethod
    def manifest_key(id: str) -> str:
        return f"artifacts/{id}/{MANIFEST}"

    def manifest_path(self, id: str) -> str:
        return self.storage.path(self.manifest_key(id))

    def url(self, art: Artifact) -> str:
        """Where an artifact's manifest lives: a file:// URI, or the fsspec URL."""
        return self.storage.url(self.manifest_key(art.id))

    def get_command(self, art: Artifact, out: str | None = None) -> str:
        """The ``dode artifacts get`` command line that downloads ``art``, verified, into ``out`` (default: the
        id's first 12 digits): works on any machine that reaches this registry, where a file:// URL does not."""
        return (f"dode artifacts get {art.id} --registry {shlex.quote(self.uri)} "
                f"--out {shlex.quote(out or art.id[:12])}")

    def staging(self) -> StagingArea:
        """A private local directory for partial files (``with reg.staging() as area: area.path``)."""
        return StagingArea(self.storage.staging)

    # Publishing.
    def check_writable(self) -> None:
        """Raise a ValueError now, before any work, when the registry cannot be written."""
        if not self.writable:
            self.storage.check_writable()
            self.writable = True

    def publish(
        self,
        kind: str,
        key: str,
        files: Mapping[str, Path | bytes],
        *,
        params: Mapping[str, Any] | None = None,
        parents: Sequence[str | Artifact] = (),
        provenance: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Publish an immutable artifact (files first, manifest last); returns the existing one if identical.

        An existing artifact with a damaged, missing or unlisted file, or a broken manifest, is repaired
        from the content being published (it hashes to the same id).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; choose one of {list(KINDS)}")
        if not isinstance(key, str) or not key.strip() or printable(key) != key:
            raise ValueError(f"artifact key must be a non-empty one-line string like 'digits-ddpm/euler/nfe5', got {key!r}")
        params = json.loads(canonical_json(dict(params or {})))
        parent_arts = [self.get(p.id if isinstance(p, Artifact) else p) for p in parents]
        files = expand_files(files)
        self.check_writable()

        # Stage every file (hashed while copied), then files into place and the manifest last.
        with self.staging() as area:
            staged = {name: stage(content, area.path) for name, content in files.items()}
            id = artifact_id(kind, key, params, [p.id for p in parent_arts], {n: s.sha256 for n, s in staged.items()})
            existing = self.load(id)
            for name, s in staged.items():
                if existing is None or self.file_problem(existing, name) is not None:
                    self.storage.commit(s.path, self.file_key(id, name))
            if existing is not None:
                if not self.storage.exists(self.manifest_key(id)):  # known here, deleted there: restore it
                    self.storage.commit(json.dumps(existing.to_dict(), indent=2, sort_keys=True).encode(),
                                        self.manifest_key(id))
                return existing
            art = Artifact(id, kind, key, params, tuple(p.id for p in parent_arts),
                           self.provenance(provenance, parent_arts),
                           {n: {"sha256": s.sha256, "size": s.size} for n, s in sorted(staged.items())},
                           datetime.now(timezone.utc).isoformat())
            self.storage.commit(json.dumps(art.to_dict(), indent=2, sort_keys=True).encode(), self.manifest_key(id))
        self.manifests[id] = art
        self.broken.pop(id, None)
        return art

    def publish_json(
        self, kind: str, key: str, obj: Any, *, params: Mapping[str, Any] | None = None,
        parents: Sequence[str | Artifact] = (), provenance: Mapping[str, Any] | None = None, name: str = "data.json",
    ) -> Artifact:
        """Publish one JSON document as the artifact's file ``name``."""
        try:
            data = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as err:
            raise ValueError(f"cannot store {type(obj).__name__} as JSON: {err}") from None
        return self.publish(kind, key, {name: data}, params=params, parents=parents, provenance=provenance)

    def provenance(self, extra: Mapping[str, Any] | None, parents: Sequence[Artifact]) -> dict[str, Any]:
        """Versions, this registry's provenance, the model inherited from parents, then the caller's ``extra``."""
        out = {**static_provenance(), **self.base_provenance}
        model = next((p.provenance["model"] for p in parents if "model" in p.provenance), None)
        if model is not None:
            out["model"] = model
        out.update(json.loads(canonical_json(dict(extra or {}))))
        return out

    # Manifests.
    def load(self, id: str) -> Artifact | None:
        """The artifact ``id`` when its manifest exists and is sound; None otherwise (problems in ``broken``)."""
        if id in self.manifests:
            return self.manifests[id]
        try:
            raw = self.storage.read(self.manifest_key(id), MAX_JSON_BYTES)
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
        return id in self.manifests or self.storage.exists(self.manifest_key(id))

    def ids(self) -> list[str]:
        """Ids of every complete, sound artifact (broken manifests are kept in ``broken``, see ``verify``)."""
        dirs = [d for d in self.storage.listdir("artifacts") if HEX64.fullmatch(d)]
        unknown = [d for d in dirs if d not in self.manifests]
        if unknown:
            for key, raw in self.storage.read_many((self.manifest_key(d) for d in unknown), MAX_JSON_BYTES).items():
                self.parsed(key.split("/")[1], raw)
        return sorted(d for d in dirs if d in self.manifests)

    def list(self, kind: str | None = None) -> list[Artifact]:
        """Every artifact (of ``kind``), oldest first."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; choose one of {list(KINDS)}")
        arts = [self.manifests[i] for i in self.ids()]
        return sorted((a for a in arts if kind is None or a.kind == kind), key=lambda a: (a.created, a.id))

    def find(self, kind: str, key: str | None = None, **params: Any) -> list[Artifact]:
        """Artifacts of ``kind`` (with ``key``) whose params include ``params``, newest first."""
        want = json.loads(canonical_json(params))
        hits = [a for a in self.list(kind)
                if (key is None or a.key == key) and all(a.params.get(k) == v for k, v in want.items())]
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
                if not self.exists(parent):
                    raise ValueError(f"artifact {art.short} names parent {parent[:12]}, which is not in {self.uri}")
                todo.append(self.get(parent))
        return out

    def fetch(self, ref: str | Artifact, out_dir: str | os.PathLike, *, force: bool = False) -> Path:
        """Download every file of an artifact into ``out_dir`` (only inside it), each verified; all or nothing.

        A file already there with the same content is kept; other content is refused unless ``force``.
        """
        from .fetch import fetch

        return fetch(self, self.get(ref), Path(out_dir), force=force)

    # Checking and cleaning.
    def intact(self, id: str) -> bool:
        """Whether artifact ``id`` is in the registry now, its manifest sound and every file verified (remembered
        per file state): what a resumed run checks before trusting a cached result that names ``id``."""
        if not (isinstance(id, str) and HEX64.fullmatch(id) and self.storage.exists(self.manifest_key(id))):
            return False
        art = self.load(id)
        return art is not None and all(self.file_problem(art, name) is None for name in art.files)

    def check_readable(self) -> None:
        """A ValueError unless the registry exists and can be read (a missing path, a file, no credentials)."""
        self.storage.check_readable()

    def verify(self, ref: str | Artifact | None = None) -> list[str]:
        """Every problem found (empty when all is well); see ``dode.store.verify``."""
        from .verify import verify

        return verify(self, ref)

    def stale(self) -> list[Stale]:
        """Partial files in the staging directory that no live writer owns."""
        return stale_entries(self.storage.staging)

    def gc(self) -> list[Stale]:
        """Remove the stale partial files (``dode.store.staging``); returns what was removed."""
        return collect(self.storage.staging)
