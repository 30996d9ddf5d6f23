"""The artifact registry: immutable artifacts addressed by the sha256 of their content (``MANIFEST_VERSION``).

Layout under the registry root (a local directory or any fsspec URL, e.g. ``s3://bucket/prefix``)::

    artifacts/<id>/files/<name>...   the artifact's files, byte for byte
    artifacts/<id>/manifest.json     kind, key, params, parents, provenance, files' sha256 and sizes
    staging/                         local temporary files (same file system, so renames are atomic)

The id is the sha256 of the canonical JSON of (kind, key, params, parents, every file's sha256), so
identical inputs give the same id and re-publishing is a no-op. Publishing writes every file first
(locally to ``staging/`` and renamed into place; on object stores each PUT is atomic) and the
manifest last: an artifact exists exactly when its manifest does, so a crash at any point leaves
nothing visible, and concurrent publishers of the same artifact write identical bytes.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .. import __version__

KINDS = ("trajectory", "lambdas", "samples", "reference-stats", "score", "report", "model")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY = REPO_ROOT / "data" / "registry"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dode" / "registry"
PACKAGES = ("torch", "numpy", "pyarrow", "diffusers", "fsspec", "s3fs", "pytorch-fid")
CHUNK = 1 << 22


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
        """One line for listings: id first."""
        return f"{self.id}  {self.kind:<15} {self.key}  {self.created}"

    def to_dict(self) -> dict[str, Any]:
        return {"manifest_version": MANIFEST_VERSION, **asdict(self), "parents": list(self.parents)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Artifact:
        data = dict(data)
        version = data.pop("manifest_version", None)
        if version != MANIFEST_VERSION:
            raise ValueError(f"manifest version {version!r}, this dode {__version__} reads {MANIFEST_VERSION}; "
                             "upgrade dode to read this registry")
        return cls(**{**data, "parents": tuple(data["parents"])})


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


def check_name(name: str) -> str:
    """A file name inside an artifact: a relative POSIX path without '.', '..' or empty parts."""
    parts = PurePosixPath(name).parts
    if not name or "\\" in name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"artifact file name {name!r} must be a relative path like 'data.json' or 'unet/config.json'")
    return "/".join(parts)


def expand_files(files: Mapping[str, Path | bytes]) -> dict[str, Path | bytes]:
    """Validate names; a directory becomes every file under it, named '<name>/<relative path>'."""
    if not files:
        raise ValueError("an artifact needs at least one file: files={'name': path_or_bytes}")
    out: dict[str, Path | bytes] = {}
    for name, content in files.items():
        name = check_name(name)
        if isinstance(content, (bytes, bytearray, memoryview)):
            out[name] = bytes(content)
        elif isinstance(content, (str, os.PathLike)) and Path(content).is_dir():
            for path in sorted(p for p in Path(content).rglob("*") if p.is_file()):
                out[f"{name}/{path.relative_to(content).as_posix()}"] = path
        elif isinstance(content, (str, os.PathLike)) and Path(content).is_file():
            out[name] = Path(content)
        else:
            raise ValueError(f"file {name!r}: {content!r} is neither bytes nor an existing file or directory")
    return out


def chunks(content: Path | bytes) -> Iterator[bytes]:
    if isinstance(content, bytes):
        yield content
        return
    with open(content, "rb") as f:
        while block := f.read(CHUNK):
            yield block


@functools.lru_cache(maxsize=1)
def static_provenance() -> dict[str, Any]:
    """dode version, git commit (when in a git checkout), Python and key package versions."""
    out: dict[str, Any] = {"dode_version": __version__, "python": sys.version.split()[0]}
    if (REPO_ROOT / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                  text=True, timeout=10, check=False)
            if head.returncode == 0:
                out["git_commit"] = head.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    out["packages"] = packages
    return out


class Registry:
    """Content-addressed artifacts in a local directory or behind any fsspec URL.

    ``uri`` defaults to ``$DODE_REGISTRY``, else ``<repo>/data/registry``. ``storage_options`` go to
    fsspec (e.g. ``{"endpoint_url": "http://127.0.0.1:9000"}`` for an S3-compatible server; fsspec's
    ``FSSPEC_S3_ENDPOINT_URL`` and botocore's ``AWS_ENDPOINT_URL`` work too). Remote files read through
    ``local_path`` are cached, verified, under ``cache_dir`` (default ``$DODE_CACHE`` or ~/.cache/dode).
    """

    def __init__(
        self,
        uri: str | os.PathLike | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.uri = str(uri or os.environ.get("DODE_REGISTRY") or DEFAULT_REGISTRY)
        try:
            self.fs, root = fsspec.core.url_to_fs(self.uri, **dict(storage_options or {}))
        except (ImportError, ValueError) as err:
            raise ValueError(f"cannot open registry {self.uri!r}: {err}; use a local path or an fsspec URL "
                             "such as s3://bucket/prefix") from None
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        self.cache_dir = Path(cache_dir or os.environ.get("DODE_CACHE") or DEFAULT_CACHE)
        self.manifests: dict[str, Artifact] = {}
        self.writable = False

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    # Paths.
    def artifact_dir(self, id: str) -> str:
        return f"{self.root}/artifacts/{id}"

    def file_path(self, id: str, name: str) -> str:
        return f"{self.artifact_dir(id)}/files/{name}"

    def manifest_path(self, id: str) -> str:
        return f"{self.artifact_dir(id)}/{MANIFEST}"

    # Publishing.
    def check_writable(self) -> None:
        """Raise a ValueError now, before any work, when the registry cannot be written."""
        if self.writable:
            return
        probe = f"{self.root}/staging/probe-{uuid.uuid4().hex}"
        try:
            if self.local:
                Path(probe).parent.mkdir(parents=True, exist_ok=True)
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except Exception as err:  # noqa: BLE001 - any backend failure means "not writable"
            raise ValueError(
                f"registry {self.uri} is not writable ({type(err).__name__}: {err}); "
                "choose a writable location with --registry URI or $DODE_REGISTRY"
            ) from None
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
        """Publish an immutable artifact (files first, manifest last); returns the existing one if identical."""
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; choose one of {list(KINDS)}")
        if not isinstance(key, str) or not key.strip() or "\n" in key:
            raise ValueError(f"artifact key must be a non-empty one-line string like 'digits-ddpm/euler/nfe5', got {key!r}")
        params = json.loads(canonical_json(dict(params or {})))
        parent_arts = [self.get(p.id if isinstance(p, Artifact) else p) for p in parents]
        files = expand_files(files)
        self.check_writable()

        # Hash every file (staged locally in the same pass, so the registry reads each byte once).
        staged: dict[str, str] = {}
        hashes, sizes = {}, {}
        try:
            for name, content in files.items():
                hashes[name], sizes[name], tmp = self.stage(content)
                if tmp:
                    staged[name] = tmp
            id = artifact_id(kind, key, params, [p.id for p in parent_arts], hashes)
            if self.exists(id):
                return self.get(id)

            # Files into place, then the manifest: only a complete artifact becomes visible.
            for name, content in files.items():
                self.put(content, staged.pop(name, None), self.file_path(id, name))
            art = Artifact(id, kind, key, params, tuple(p.id for p in parent_arts),
                           self.provenance(provenance, parent_arts),
                           {n: {"sha256": hashes[n], "size": sizes[n]} for n in sorted(hashes)},
                           datetime.now(timezone.utc).isoformat())
            self.put(json.dumps(art.to_dict(), indent=2, sort_keys=True).encode(), None, self.manifest_path(id))
        finally:
            for tmp in staged.values():
                Path(tmp).unlink(missing_ok=True)
        self.manifests[id] = art
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
        """Static provenance, the Prefect flow run (when under Prefect), the model inherited from parents."""
        out = dict(static_provenance())
        run = os.environ.get("PREFECT__FLOW_RUN_ID")
        if run:
            out["prefect_flow_run_id"] = run
        model = next((p.provenance["model"] for p in parents if "model" in p.provenance), None)
        if model is not None:
            out["model"] = model
        out.update(json.loads(canonical_json(dict(extra or {}))))
        return out

    def stage(self, content: Path | bytes) -> tuple[str, int, str]:
        """(sha256, size, staged temp path or '') of one file; local registries copy it into staging."""
        digest, size = hashlib.sha256(), 0
        tmp = f"{self.root}/staging/{uuid.uuid4().hex}" if self.local else ""
        with open(tmp, "wb") if tmp else contextlib.nullcontext() as out:
            for block in chunks(content):
                digest.update(block)
                size += len(block)
                if out is not None:
                    out.write(block)
            if out is not None:
                out.flush()
                os.fsync(out.fileno())
        return digest.hexdigest(), size, tmp

    def put(self, content: Path | bytes, staged: str | None, dest: str) -> None:
        """Write one file atomically and durably: fsync, rename from staging and fsync the directory
        locally; one PUT on object stores."""
        if self.local:
            if staged is None:
                staged = self.stage(content)[2]
            os.chmod(staged, 0o444)
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, dest)
            fd = os.open(Path(dest).parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif isinstance(content, bytes):
            self.fs.pipe_file(dest, content)
        else:
            self.fs.put_file(str(content), dest)

    # Reading.
    def exists(self, id: str) -> bool:
        if id in self.manifests:
            return True
        self.fs.invalidate_cache(self.artifact_dir(id))
        return self.fs.exists(self.manifest_path(id))

    def ids(self) -> list[str]:
        """Ids of every complete artifact (one whose manifest exists)."""
        base = f"{self.root}/artifacts"
        self.fs.invalidate_cache(base)
        try:
            dirs = [d.rstrip("/").rsplit("/", 1)[-1] for d in self.fs.ls(base, detail=False)]
        except FileNotFoundError:
            return []
        unknown = [d for d in dirs if d not in self.manifests]
        if unknown:
            found = self.fs.cat([self.manifest_path(d) for d in unknown], on_error="omit")
            for data in found.values():
                try:
                    art = Artifact.from_dict(json.loads(data))
                except (ValueError, TypeError, KeyError):
                    continue  # unreadable manifests are reported by verify()
                self.manifests[art.id] = art
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

    def get(self, ref: str | Artifact) -> Artifact:
        """The artifact with this id or unique id prefix; a ValueError lists close matches otherwise."""
        if isinstance(ref, Artifact):
            return ref
        ref = str(ref).strip().lower()
        if len(ref) == 64 and ref in self.manifests:
            return self.manifests[ref]
        if len(ref) == 64 and self.exists(ref):
            return self.read_manifest(ref)
        ids = self.ids() if ref else []
        hits = [i for i in ids if i.startswith(ref)] if ref else []
        if len(hits) == 1:
            return self.manifests[hits[0]]
        if hits:
            listing = "\n  ".join(self.manifests[i].line() for i in hits[:10])
            raise ValueError(f"artifact id prefix {ref!r} is ambiguous in {self.uri}; give more characters:\n  {listing}")
        close = difflib.get_close_matches(ref, [i[: len(ref)] for i in ids], n=5, cutoff=0.5)
        near = [self.manifests[i] for i in ids if i[: len(ref)] in close]
        near += [a for a in (self.manifests[i] for i in ids) if ref and ref in a.key.lower() and a not in near]
        hint = "close matches:\n  " + "\n  ".join(a.line() for a in near[:5]) if near else "see `dode artifacts list`"
        raise ValueError(f"no artifact {ref!r} in registry {self.uri}; {hint}")

    def read_manifest(self, id: str) -> Artifact:
        try:
            art = Artifact.from_dict(json.loads(self.fs.cat_file(self.manifest_path(id))))
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"artifact {id[:12]}: unreadable manifest ({err}); run `dode artifacts verify`") from None
        self.manifests[id] = art
        return art

    def entry(self, ref: str | Artifact, name: str) -> tuple[Artifact, dict[str, Any]]:
        art = self.get(ref)
        if name not in art.files:
            raise ValueError(f"artifact {art.short} ({art.kind} {art.key}) has no file {name!r}; "
                             f"its files: {sorted(art.files)}")
        return art, art.files[name]

    def read_bytes(self, ref: str | Artifact, name: str) -> bytes:
        """One file's content, checked against its sha256."""
        art, entry = self.entry(ref, name)
        data = self.fs.cat_file(self.file_path(art.id, name))
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError(f"file {name!r} of artifact {art.short} fails its sha256 check; "
                             "the registry copy is corrupted (run `dode artifacts verify`)")
        return data

    def read_json(self, ref: str | Artifact, name: str = "data.json") -> Any:
        return json.loads(self.read_bytes(ref, name))

    def local_path(self, ref: str | Artifact, name: str) -> Path:
        """A local read-only path to one file: the registry's own file, or a verified cached copy."""
        art, entry = self.entry(ref, name)
        if self.local:
            return Path(self.file_path(art.id, name))
        dest = self.cache_dir / art.id / name
        if not dest.is_file():
            self.download(art, name, entry, dest, readonly=True)
        return dest

    def local_dir(self, ref: str | Artifact) -> Path:
        """A local directory holding all of the artifact's files under their names (e.g. a model folder)."""
        art = self.get(ref)
        if self.local:
            return Path(self.artifact_dir(art.id)) / "files"
        for name in art.files:
            self.local_path(art, name)
        return self.cache_dir / art.id

    def download(self, art: Artifact, name: str, entry: Mapping[str, Any], dest: Path, readonly: bool = False) -> None:
        """Copy one file to ``dest`` through a temporary file, verifying its sha256 before it appears."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        try:
            with self.fs.open(self.file_path(art.id, name), "rb") as src, open(tmp, "wb") as out:
                while block := src.read(CHUNK):
                    digest.update(block)
                    out.write(block)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"file {name!r} of artifact {art.short} is missing from {self.uri}") from None
        if digest.hexdigest() != entry["sha256"]:
            tmp.unlink()
            raise ValueError(f"file {name!r} of artifact {art.short} fails its sha256 check (expected "
                             f"{entry['sha256'][:16]}…, got {digest.hexdigest()[:16]}…): the registry copy is "
                             "corrupted or was tampered with; it was not written")
        if readonly:
            os.chmod(tmp, 0o444)
        os.replace(tmp, dest)

    def fetch(self, ref: str | Artifact, out_dir: str | os.PathLike) -> Path:
        """Download every file of an artifact into ``out_dir``, each verified against its sha256."""
        art = self.get(ref)
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".dode-probe-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise ValueError(f"cannot write to {out} ({err}); choose another --out directory") from None
        for name, entry in art.files.items():
            dest = out / name
            if dest.exists():
                if file_sha256(dest) == entry["sha256"]:
                    continue
                raise ValueError(f"{dest} exists with other content; remove it or choose another --out directory")
        for name, entry in art.files.items():
            if not (out / name).exists():
                self.download(art, name, entry, out / name)
        return out

    # Checking.
    def verify(self, ref: str | Artifact | None = None) -> list[str]:
        """Problems found (empty when all is well): manifests, ids, every file's size and sha256, parents."""
        if ref is not None:
            targets = [self.get(ref).id]
        else:
            base = f"{self.root}/artifacts"
            self.fs.invalidate_cache(base)
            try:
                dirs = [d.rstrip("/").rsplit("/", 1)[-1] for d in self.fs.ls(base, detail=False)]
            except FileNotFoundError:
                dirs = []
            targets = [d for d in dirs if self.fs.exists(self.manifest_path(d))]
        problems = []
        for id in sorted(targets):
            problems += self.verify_one(id)
        return problems

    def verify_one(self, id: str) -> list[str]:
        try:
            art = self.read_manifest(id)
        except ValueError as err:
            return [str(err)]
        problems = []
        recomputed = artifact_id(art.kind, art.key, art.params, art.parents,
                                 {n: e["sha256"] for n, e in art.files.items()})
        if art.id != id or recomputed != id:
            problems.append(f"artifact {id[:12]}: manifest does not hash to its id (edited or corrupted)")
        for name, entry in sorted(art.files.items()):
            path = self.file_path(id, name)
            try:
                digest, size = hashlib.sha256(), 0
                with self.fs.open(path, "rb") as f:
                    while block := f.read(CHUNK):
                        digest.update(block)
                        size += len(block)
            except FileNotFoundError:
                problems.append(f"artifact {id[:12]}: file {name!r} is missing")
                continue
            if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
                problems.append(f"artifact {id[:12]}: file {name!r} fails its sha256 check ({size} bytes)")
        for parent in art.parents:
            if not self.exists(parent):
                problems.append(f"artifact {id[:12]}: parent {parent[:12]} is missing from the registry")
        return problems

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


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    for block in chunks(Path(path)):
        digest.update(block)
    return digest.hexdigest()

