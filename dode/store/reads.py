"""Verified reads: every file the registry hands out is checked against its manifest's sha256 and size.

Bytes (``read_bytes``) are hashed as they are read, so what is returned is what was checked. Files read
through a local path (``local_path``, ``local_dir``) are hashed once per process and file state: a match
is remembered under the file's device, inode, size, mtime and ctime (``VERIFIED``); any write, chmod or
replacement changes the ctime, which only root can set, so a changed file is hashed again. A symbolic
link or a non-regular file inside the registry is refused (``dode.store.storage.Refused``).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from dode.common.bounded import MAX_JSON_BYTES, load_json
from dode.store.manifest import HEX64, Artifact, file_key, manifest_key
from dode.store.storage import CHUNK, Refused, chunks, local_tree

VERIFIED: set[tuple[tuple[int, ...], str]] = set()  # (file state token, sha256) checked in this process


def hash_blocks(blocks: Iterable[bytes], limit: int) -> tuple[str, int, bytes | None]:
    """(sha256, size, the bytes when ``limit`` >= 0) of a stream; reading stops one byte past ``limit``."""
    digest, size, kept = hashlib.sha256(), 0, []
    for block in blocks:
        digest.update(block)
        size += len(block)
        if limit >= 0:
            kept.append(block)
            if size > limit:
                break
    return digest.hexdigest(), size, b"".join(kept) if limit >= 0 else None


def mismatch(art: Artifact, name: str, sha256: str, size: int) -> str | None:
    """Why a file's content does not match its manifest entry (None when it does)."""
    entry = art.files[name]
    if size != entry["size"]:
        return f"fails its size check ({size} bytes, the manifest says {entry['size']})"
    if sha256 != entry["sha256"]:
        return f"fails its sha256 check ({size} bytes)"
    return None


def tee(blocks: Iterable[bytes], out: BinaryIO) -> Iterator[bytes]:
    """The blocks, each also written to ``out``."""
    for block in blocks:
        out.write(block)
        yield block


def file_sha256(path: str | os.PathLike) -> str:
    return hash_blocks(chunks(Path(path)), -1)[0]


def local_token(path: Path) -> tuple[int, ...]:
    s = os.stat(path, follow_symlinks=False)
    return s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns


class VerifiedReads:
    """The reading half of ``Registry`` (it provides ``storage``, ``uri``, ``cache_dir``, ``get``, ``load``):
    file contents, each verified, and whether an artifact is intact."""

    def entry(self, ref: str | Artifact, name: str) -> tuple[Artifact, dict[str, Any]]:
        art = self.get(ref)
        if name not in art.files:
            raise ValueError(f"artifact {art.short} ({art.kind} {art.key}) has no file {name!r}; "
                             f"its files: {sorted(art.files)}")
        return art, art.files[name]

    def corrupt(self, art: Artifact, name: str, why: str) -> ValueError:
        return ValueError(f"file {name!r} of artifact {art.short} ({art.kind} {art.key}) {why}: the registry copy is "
                          "corrupted or was tampered with; run `dode artifacts verify`")

    def read_bytes(self, ref: str | Artifact, name: str) -> bytes:
        """One file's content, hashed as it is read and checked against its sha256 and size."""
        art, entry = self.entry(ref, name)
        try:
            sha, size, data = hash_blocks(self.blocks(file_key(art.id, name)), entry["size"])
        except FileNotFoundError:
            raise self.corrupt(art, name, "is missing") from None
        except Refused as err:
            raise self.corrupt(art, name, f"is refused ({err})") from None
        why = mismatch(art, name, sha, size)
        if why:
            raise self.corrupt(art, name, why)
        return data

    def read_json(self, ref: str | Artifact, name: str = "data.json", *, max_bytes: int = MAX_JSON_BYTES) -> Any:
        return load_json(self.read_bytes(ref, name), f"{name} of artifact {self.get(ref).short}", max_bytes=max_bytes)

    def blocks(self, key: str) -> Iterable[bytes]:
        with self.storage.open(key) as f:
            while block := f.read(CHUNK):
                yield block

    def file_problem(self, art: Artifact, name: str, *, fresh: bool = False) -> str | None:
        """Why the stored file ``name`` does not match the manifest (None when it does).

        A match is remembered per file state (``VERIFIED``); ``fresh`` re-hashes regardless.
        """
        key, sha = file_key(art.id, name), art.files[name]["sha256"]
        try:
            token = self.storage.token(key)
            if token is not None and not fresh and (token, sha) in VERIFIED:
                return None
            digest, size, _ = hash_blocks(self.blocks(key), -1)
            if token is not None and token != self.storage.token(key):
                return "changed while it was read"
        except FileNotFoundError:
            return "is missing"
        except Refused as err:
            return f"is refused ({err})"
        except OSError as err:
            return f"is unreadable ({err.strerror})"
        why = mismatch(art, name, digest, size)
        if why is None and token is not None:
            VERIFIED.add((token, sha))
        return why

    def intact(self, id: str) -> bool:
        """Whether artifact ``id`` is in the registry now, its manifest sound and every file verified (remembered
        per file state): what a resumed run checks before trusting a cached result that names ``id``."""
        if not (isinstance(id, str) and HEX64.fullmatch(id) and self.storage.exists(manifest_key(id))):
            return False
        art = self.load(id)
        return art is not None and all(self.file_problem(art, name) is None for name in art.files)

    def local_path(self, ref: str | Artifact, name: str) -> Path:
        """A local read-only path to one verified file: the registry's own file, or a verified cached copy."""
        art, entry = self.entry(ref, name)
        key = file_key(art.id, name)
        try:
            path = self.storage.local_file(key)
        except (FileNotFoundError, Refused) as err:
            raise self.corrupt(art, name, f"is missing or refused ({err})") from None
        if path is not None:
            why = self.file_problem(art, name)
            if why:
                raise self.corrupt(art, name, why)
            return path
        dest = self.cache_dir / art.id / name
        if not dest.is_file() or dest.is_symlink() or (local_token(dest), entry["sha256"]) not in VERIFIED:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
            self.download(art, name, tmp)
            self.install(tmp, dest, readonly=True)
            VERIFIED.add((local_token(dest), entry["sha256"]))
        return dest

    def local_dir(self, ref: str | Artifact) -> Path:
        """A local directory holding exactly the artifact's files under their names (e.g. a model folder)."""
        art = self.get(ref)
        paths = {name: self.local_path(art, name) for name in art.files}
        name, path = next(iter(paths.items()))
        folder = path.parents[name.count("/")]
        tree = local_tree(folder)
        extra = sorted(n for n, kind in tree.items() if n not in art.files or kind != "file")
        if extra:
            what = "symbolic link" if tree[extra[0]] == "link" else "file"
            raise ValueError(f"artifact {art.short}: unlisted {what} {extra[0]!r} in {folder} (not a file of the "
                             "manifest); run `dode artifacts verify`")
        return folder

    def download(self, art: Artifact, name: str, tmp: Path) -> None:
        """Copy one file to the new local file ``tmp``, verified (nothing is left when it fails)."""
        entry = art.files[name]
        try:
            with open(tmp, "xb") as out:
                digest, size, _ = hash_blocks(tee(self.blocks(file_key(art.id, name)), out), -1)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise self.corrupt(art, name, f"is missing from {self.uri}") from None
        except Refused as err:
            tmp.unlink(missing_ok=True)
            raise self.corrupt(art, name, f"is refused ({err})") from None
        why = mismatch(art, name, digest, size)
        if why:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"file {name!r} of artifact {art.short} {why} (expected {entry['sha256'][:16]}…, got "
                             f"{digest[:16]}…): the registry copy is corrupted or was tampered with; it was not written")

    @staticmethod
    def install(tmp: Path, dest: Path, readonly: bool = False) -> None:
        if readonly:
            os.chmod(tmp, 0o444)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
