"""Where registry bytes live: a small interface with a local-directory and an fsspec implementation.

Keys are POSIX paths relative to the registry root (``artifacts/<id>/files/<name>``). A storage knows
nothing of manifests or ids: it reads, lists and writes bytes, atomically, and turns backend failures
(no such registry, a file in its place, missing credentials) into one ``ValueError`` saying what to do.

``stage`` copies a file into a local staging area while hashing it, so the bytes later committed are
exactly the bytes hashed; ``commit`` moves them into place (a rename on a local disk, one PUT on an
object store). Local reads never follow a symbolic link inside the registry (each path component is
opened with ``O_NOFOLLOW`` relative to its parent), and local writes likewise (``commit`` creates and
opens every folder below the root without following a link, then renames relative to that folder), so a
link planted in the registry can make it neither read nor write outside itself. The root itself may be
reached through a link (a registry on another disk).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem

from dode.store.staging import StagingArea

CHUNK = 1 << 22


class Refused(ValueError):
    """A registry path that is a symbolic link, passes through one, or is not a regular file."""


@dataclass(frozen=True)
class Staged:
    """A file copied into a staging area: its sha256, size and the local copy."""

    sha256: str
    size: int
    path: Path


def chunks(content: Path | bytes) -> Iterator[bytes]:
    """The bytes of ``content`` in blocks of ``CHUNK``."""
    if isinstance(content, bytes):
        yield content
        return
    with open(content, "rb") as f:
        while block := f.read(CHUNK):
            yield block


def stage(content: Path | bytes, area: Path) -> Staged:
    """Copy ``content`` into ``area`` while hashing it, durably (fsync)."""
    digest, size = hashlib.sha256(), 0
    dest = area / uuid.uuid4().hex
    with open(dest, "wb") as out:
        for block in chunks(content):
            digest.update(block)
            size += len(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return Staged(digest.hexdigest(), size, dest)


def local_tree(base: Path) -> dict[str, str]:
    """Every entry under ``base`` but directories: relative name -> 'file', 'link' or 'other' (links not followed)."""
    out = {}
    for dirpath, dirs, files in os.walk(base, followlinks=False):
        for name in dirs + files:
            path = Path(dirpath) / name
            kind = "link" if path.is_symlink() else "file" if path.is_file() else "dir" if path.is_dir() else "other"
            if kind != "dir":
                out[path.relative_to(base).as_posix()] = kind
    return out


class Storage(Protocol):
    """What the registry needs from a place that holds bytes."""

    uri: str
    staging: Path  # a local directory for partial files (StagingArea roots)

    def check_readable(self) -> None: ...
    def check_writable(self) -> None: ...
    def exists(self, key: str) -> bool: ...
    def kind(self, key: str) -> str | None: ...
    def listdir(self, key: str) -> list[str]: ...
    def walk(self, key: str) -> dict[str, str]: ...
    def read(self, key: str, limit: int = -1) -> bytes: ...
    def read_many(self, keys: Iterable[str], limit: int = -1) -> dict[str, bytes]: ...
    def open(self, key: str) -> BinaryIO: ...
    def local_file(self, key: str) -> Path | None: ...
    def token(self, key: str) -> tuple[int, ...] | None: ...
    def commit(self, staged: Path | bytes, key: str) -> None: ...
    def path(self, key: str) -> str: ...
    def url(self, key: str) -> str: ...


def refusal(key: str, err: OSError) -> OSError:
    """A ``Refused`` for a link, a file where a folder belongs or a name too long; other errors as they are."""
    if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return Refused(f"{key}: a path component is a symbolic link or not a directory; the registry holds no "
                       "links (run `dode artifacts verify`)")
    if err.errno == errno.ENAMETOOLONG:
        return Refused(f"{key[:80]}...: a name too long for this file system")
    return err


def not_writable(uri: str, err: BaseException) -> ValueError:
    return ValueError(f"registry {uri} is not writable ({type(err).__name__}: {err}); "
                      "choose a writable location with --registry URI or $DODE_REGISTRY")


class LocalStorage:
    """A registry in a local (or NFS) directory."""

    def __init__(self, root: str | os.PathLike, uri: str) -> None:
        self.uri, self.root = uri, Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"registry {uri} is a file, not a directory; choose a directory with --registry "
                             "URI or $DODE_REGISTRY")
        self.staging = self.root / "staging"

    def check_readable(self) -> None:
        if not self.root.is_dir():
            raise ValueError(f"registry {self.uri} does not exist; check --registry URI or $DODE_REGISTRY "
                             "(a registry is created by its first publish)")

    def check_writable(self) -> None:
        try:
            with StagingArea(self.staging) as area:
                (area.path / "probe").write_bytes(b"")
        except OSError as err:
            raise not_writable(self.uri, err) from None

    def folder_fd(self, parts: list[str], *, create: bool = False) -> int:
        """An fd of the folder ``root/parts...``, each part opened (created first when ``create``) without
        following a link."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts:
                if create:
                    try:
                        os.mkdir(part, dir_fd=fd)
                    except FileExistsError:
                        pass
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def fd(self, key: str, final: int = os.O_RDONLY) -> int:
        """An fd of ``key`` opened component by component without following links."""
        parts = key.split("/")
        try:
            fd = self.folder_fd(parts[:-1])
            try:
                return os.open(parts[-1], final | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise refusal(key, err) from None

    def kind(self, key: str) -> str | None:
        """What ``key`` is, its own entry (a link is not followed): 'dir', 'file', 'link', 'other' or None."""
        try:
            mode = os.lstat(self.root / key).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ("link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode)
                else "other")

    def regular_fd(self, key: str) -> int:
        fd = self.fd(key)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Refused(f"{key} is not a regular file (run `dode artifacts verify`)")
        return fd

    def exists(self, key: str) -> bool:
        try:
            os.close(self.fd(key))
        except (OSError, ValueError):
            return False
        return True

    def listdir(self, key: str) -> list[str]:
        try:
            fd = self.fd(key, os.O_DIRECTORY)
        except (OSError, ValueError):
            return []
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def walk(self, key: str) -> dict[str, str]:
        return local_tree(self.root / key)

    def read(self, key: str, limit: int = -1) -> bytes:
        """The file's bytes; with ``limit`` >= 0, at most ``limit + 1`` of them (enough to tell it is too long)."""
        with self.open(key) as f:
            return f.read(limit + 1 if limit >= 0 else -1)

    def read_many(self, keys: Iterable[str], limit: int = -1) -> dict[str, bytes]:
        out = {}
        for key in keys:
            try:
                out[key] = self.read(key, limit)
            except (OSError, ValueError):
                continue
        return out

    def open(self, key: str) -> BinaryIO:
        return os.fdopen(self.regular_fd(key), "rb")

    def local_file(self, key: str) -> Path:
        os.close(self.regular_fd(key))
        return self.root / key

    def token(self, key: str) -> tuple[int, ...]:
        """What changes whenever the file does: device, inode, size, mtime and ctime (which only root can set)."""
        fd = self.regular_fd(key)
        try:
            s = os.fstat(fd)
        finally:
            os.close(fd)
        return s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns

    def commit(self, staged: Path | bytes, key: str) -> None:
        """Rename a staged file into place read-only, fsync'ing the directory (bytes are staged first)."""
        if isinstance(staged, bytes):
            with StagingArea(self.staging) as area:
                return self.commit(stage(staged, area.path).path, key)
        os.chmod(staged, 0o444)
        parts = key.split("/")
        try:
            fd = self.folder_fd(parts[:-1], create=True)
        except OSError as err:
            raise refusal(key, err) from None
        try:
            os.replace(staged, parts[-1], dst_dir_fd=fd)
            os.fsync(fd)
        finally:
            os.close(fd)

    def path(self, key: str) -> str:
        return str(self.root / key)

    def url(self, key: str) -> str:
        return (self.root / key).resolve().as_uri()


def backend(method: Callable[..., Any]) -> Callable[..., Any]:
    """Backend failures other than a missing key become one ValueError naming the registry."""

    @functools.wraps(method)
    def call(self: FsspecStorage, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (FileNotFoundError, ValueError):
            raise
        except Exception as err:  # noqa: BLE001 - any backend failure (credentials, network) is one message
            raise ValueError(f"cannot read registry {self.uri} ({type(err).__name__}: {err}); check the URL, "
                             "the credentials (e.g. AWS_ACCESS_KEY_ID / AWS_PROFILE) and the endpoint") from None

    return call


class FsspecStorage:
    """A registry behind any fsspec URL (s3://, gs://, memory://...); partial files stage locally."""

    def __init__(self, fs: Any, root: str, uri: str, staging: Path) -> None:
        self.fs, self.root, self.uri, self.staging = fs, root.rstrip("/"), uri, staging

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    @backend
    def check_readable(self) -> None:
        self.fs.invalidate_cache(self.root)
        if not self.fs.exists(self.root):
            raise ValueError(f"registry {self.uri} does not exist; check --registry URI or $DODE_REGISTRY")

    def check_writable(self) -> None:
        probe = self.path(f"staging/probe-{uuid.uuid4().hex}")
        try:
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except Exception as err:  # noqa: BLE001 - any backend failure means "not writable"
            raise not_writable(self.uri, err) from None

    @backend
    def exists(self, key: str) -> bool:
        self.fs.invalidate_cache(self.path(key).rsplit("/", 1)[0])
        return self.fs.exists(self.path(key))

    @backend
    def kind(self, key: str) -> str | None:
        try:
            info = self.fs.info(self.path(key))
        except FileNotFoundError:
            return None
        return {"directory": "dir", "file": "file"}.get(info.get("type"), "other")

    @backend
    def listdir(self, key: str) -> list[str]:
        self.fs.invalidate_cache(self.path(key))
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(key), detail=False))
        except FileNotFoundError:
            return []

    @backend
    def walk(self, key: str) -> dict[str, str]:
        base = self.path(key)
        return {p[len(base) + 1:]: "file" for p in self.fs.find(base)}

    @backend
    def read(self, key: str, limit: int = -1) -> bytes:
        return self.fs.cat_file(self.path(key), end=limit + 1 if limit >= 0 else None)

    @backend
    def read_many(self, keys: Iterable[str], limit: int = -1) -> dict[str, bytes]:
        found = self.fs.cat([self.path(k) for k in keys], on_error="omit")
        return {p[len(self.root) + 1:]: data[: limit + 1] if limit >= 0 else data for p, data in found.items()}

    @backend
    def open(self, key: str) -> BinaryIO:
        self.fs.invalidate_cache(self.path(key))  # a cached size or ETag of a replaced object would fail the read
        return self.fs.open(self.path(key), "rb")

    def local_file(self, key: str) -> None:
        return None

    def token(self, key: str) -> None:
        return None

    def commit(self, staged: Path | bytes, key: str) -> None:
        if isinstance(staged, bytes):
            self.fs.pipe_file(self.path(key), staged)
        else:
            self.fs.put_file(str(staged), self.path(key))

    def url(self, key: str) -> str:
        protocol = self.uri.split("://", 1)[0]
        return f"{protocol}://{self.path(key)}"


def open_storage(uri: str, storage_options: dict[str, Any], cache_dir: Path) -> LocalStorage | FsspecStorage:
    """The storage for ``uri``: a local directory, or any fsspec URL (e.g. ``s3://bucket/prefix``)."""
    try:
        fs, root = fsspec.core.url_to_fs(uri, **storage_options)
    except (ImportError, ValueError) as err:
        raise ValueError(f"cannot open registry {uri!r}: {err}; use a local path or an fsspec URL "
                         "such as s3://bucket/prefix") from None
    if isinstance(fs, LocalFileSystem):
        return LocalStorage(root, uri)
    return FsspecStorage(fs, root, uri, cache_dir / "staging")


def readall(f: BinaryIO) -> Iterator[bytes]:
    """The blocks of an open file."""
    with f:
        while block := f.read(CHUNK):
            yield block
