"""The artifact registry: immutable artifacts addressed by the sha256 of their content (``dode.store.manifest``).

Layout under the registry root (a ``Storage``: a local directory or any fsspec URL, e.g. ``s3://bucket/prefix``)::

    artifacts/<id>/files/<name>...   the artifact's files, byte for byte
    artifacts/<id>/manifest.json     kind, key, params, parents, provenance, files' sha256 and sizes
    index/                           the key index: lookup by kind and key (``dode.store.key_index``)
    staging/                         partial files of live writers (``dode.store.staging``)

This module holds the layout and publishing; the other jobs live in their own modules, which ``Registry``
composes: finding and lineage (``lookup``), verified reads (``reads``), downloads (``fetch``), checking
(``verify``) and cleaning (``staging``). Publishing writes every file first, then the key index entry, and
the manifest last: an artifact exists exactly when its manifest does, so a crash leaves nothing visible,
and concurrent publishers of the same artifact write identical bytes. Every read verifies: a manifest must hash to its id (else the artifact is refused), and every
file is checked against its sha256 and size (``dode.store.reads``). Provenance is what the caller passes (``Registry(provenance=...)`` and
``publish(provenance=...)``) plus the dode, Python and package versions; the registry reads no
orchestrator state.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dode.store import key_index
from dode.store.fetch import registry_root
from dode.store.lookup import Lookup, check_kind
from dode.store.manifest import (
    HEX64,
    KINDS,
    Artifact,
    artifact_id,
    canonical_json,
    expand_files,
    file_key,
    manifest_key,
    printable,
)
from dode.store.reads import VerifiedReads, file_sha256
from dode.store.staging import StagingArea, Stale, collect, stale_entries
from dode.store.storage import LocalStorage, Storage, open_storage, stage
from dode.version import __version__

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dode" / "registry"
EPHEMERAL = {"memory"}  # fsspec protocols whose files die with the process
PACKAGES = ("torch", "numpy", "pyarrow", "diffusers", "fsspec", "s3fs", "pytorch-fid")

def always_tuple(protocol: str | tuple[str, ...]) -> tuple[str, ...]:
    """An fsspec file system's protocol (a name or a tuple of names) as a tuple."""
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


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


class Registry(Lookup, VerifiedReads):
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
        self.indexed: bool | None = None  # whether the key index covers every artifact; None: not read yet
        self.seen_artifacts = False  # whether an unindexed registry was seen holding a (complete) artifact

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    @property
    def local(self) -> bool:
        """Whether the files are on a local (or mounted) file system."""
        return isinstance(self.storage, LocalStorage)

    # Keys and places.
    file_key = staticmethod(file_key)
    manifest_key = staticmethod(manifest_key)

    def manifest_path(self, id: str) -> str:
        return self.storage.path(self.manifest_key(id))

    def url(self, art: Artifact) -> str:
        """Where an artifact's manifest lives: a file:// URI, or the fsspec URL."""
        return self.storage.url(self.manifest_key(art.id))

    def staging(self) -> StagingArea:
        """A private local directory for partial files (``with reg.staging() as area: area.path``)."""
        return StagingArea(self.storage.staging)

    # Publishing.
    def check_writable(self) -> None:
        """Raise a ValueError now, before any work, when the registry cannot be written, or should not be: one
        that dies with this process (``memory://``), one inside another registry or an artifact's files."""
        if not self.writable:
            self.check_place()
            self.storage.check_writable()
            self.writable = True

    def check_place(self) -> None:
        """One ValueError for a registry that is no lasting place to publish into (``check_writable``)."""
        if EPHEMERAL & set(always_tuple(getattr(getattr(self.storage, "fs", None), "protocol", ()))):
            raise ValueError(f"registry {self.uri} lives in this process's memory and dies with it: nothing "
                             "published there could be found again; give a folder or a lasting URL (s3://...)")
        outer = registry_root(Path(self.storage.root).resolve().parent) if self.local else None
        if outer is not None:
            raise ValueError(f"registry {self.uri} is inside the registry {outer} (a registry is written only by "
                             "publishing, never holds another): choose a folder outside it")

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
        check_kind(kind)
        if not isinstance(key, str) or not key.strip() or printable(key) != key:
            raise ValueError(f"artifact key must be a non-empty one-line string like 'digits-ddpm/euler/nfe5', got {key!r}")
        params = json.loads(canonical_json(dict(params or {})))
        parent_arts = [self.get(p.id if isinstance(p, Artifact) else p) for p in parents]
        files = expand_files(files)
        self.check_writable()
        fresh = self.fresh()  # before anything of this artifact is written

        # Stage every file (hashed while copied), then files into place and the manifest last.
        with self.staging() as area:
            staged = {name: stage(content, area.path) for name, content in files.items()}
            id = artifact_id(kind, key, params, [p.id for p in parent_arts], {n: s.sha256 for n, s in staged.items()})
            existing = self.load(id)
            for name, s in staged.items():
                if existing is None or self.file_problem(existing, name) is not None:
                    self.storage.commit(s.path, self.file_key(id, name))
            if existing is not None:
                key_index.add_entry(self.storage, existing)
                if not self.storage.exists(self.manifest_key(id)):  # known here, deleted there: restore it
                    self.storage.commit(json.dumps(existing.to_dict(), indent=2, sort_keys=True).encode(),
                                        self.manifest_key(id))
                return existing
            art = Artifact(id, kind, key, params, tuple(p.id for p in parent_arts),
                           self.provenance(provenance, parent_arts),
                           {n: {"sha256": s.sha256, "size": s.size} for n, s in sorted(staged.items())},
                           datetime.now(timezone.utc).isoformat())
            key_index.add_entry(self.storage, art)
            self.storage.commit(json.dumps(art.to_dict(), indent=2, sort_keys=True).encode(), self.manifest_key(id))
        self.manifests[id] = art
        self.broken.pop(id, None)
        if fresh:
            key_index.mark_indexed(self.storage)
            self.indexed = True
        return art

    def fresh(self) -> bool:
        """Whether the registry holds no artifact and no key index yet: its first artifact marks it indexed
        (``dode.store.key_index``); a registry written before the index is listed once per ``Registry``."""
        if self.is_indexed() or self.seen_artifacts:
            return False
        self.seen_artifacts = any(self.storage.exists(manifest_key(d)) for d in self.storage.listdir("artifacts")
                                  if HEX64.fullmatch(d))
        return not self.seen_artifacts

    def reindex(self) -> int:
        """Give every artifact its key index entry and mark the registry indexed; returns the entries written."""
        return key_index.reindex(self)

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

    def fetch(self, ref: str | Artifact, out_dir: str | os.PathLike, *, force: bool = False) -> Path:
        """Download every file of an artifact into ``out_dir`` (only inside it), each verified; all or nothing.

        A file already there with the same content is kept; other content is refused unless ``force``.
        """
        from dode.store.fetch import fetch

        return fetch(self, self.get(ref), Path(out_dir), force=force)

    # Checking and cleaning.
    def check_readable(self) -> None:
        """A ValueError unless the registry exists and can be read (a missing path, a file, no credentials)."""
        self.storage.check_readable()

    def verify(self, ref: str | Artifact | None = None) -> list[str]:
        """Every problem found (empty when all is well); see ``dode.store.verify``."""
        from dode.store.verify import verify

        return verify(self, ref)

    def stale(self) -> list[Stale]:
        """Partial files in the staging directory that no live writer owns."""
        return stale_entries(self.storage.staging)

    def gc(self) -> list[Stale]:
        """Remove the stale partial files (``dode.store.staging``); returns what was removed."""
        return collect(self.storage.staging)
