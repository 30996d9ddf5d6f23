"""Partial files: where unfinished writes live, how a live writer is told from a dead one, and cleaning.

Every unfinished file of a registry lives under its ``staging/`` directory (a local directory; for a
registry behind an fsspec URL, ``<cache>/staging``), inside an *area*: a directory ``<token>/`` owned
by the lock file ``<token>.lock``, which its writer holds with ``flock`` for as long as it works.

The stale rule: an area (or lock file) is stale when its lock can be taken, i.e. no process holds it.
The kernel drops a lock when its holder dies, so a writer killed with ``kill -9`` leaves a stale area
at once, and a live one (however slow) is never stale; on NFS, Linux maps ``flock`` to NFS locks.
Anything else in ``staging/`` (left by older versions) has no owner and is stale once older than
``LOOSE_AGE_S``. Stale entries are removed by the next writer (``StagingArea.__enter__``) and by
``dode artifacts gc``, and reported by ``dode artifacts verify`` until then.

Nothing is followed: the staging directory itself must be a real directory (a symbolic link there is
refused, never written or cleaned through; ``staging_problem``), and only what a writer makes is ever
removed: an area (a real directory, emptied without following links), a lock file or a loose file, each a
regular file or directory of the staging directory itself.

The same rule covers a ``TrajectoryWriter``'s ``.<name>.<pid>.partial``: the writer holds a lock on
it, and the next writer of that file removes unlocked ones (``clean_partials``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from typing_extensions import Self

LOCK_SUFFIX = ".lock"
LOOSE_AGE_S = 3600.0


@dataclass(frozen=True)
class Stale:
    """One stale staging entry: its path and the bytes it holds."""

    path: Path
    size: int

    def line(self) -> str:
        return f"staging: stale partial {self.path} ({self.size} bytes, no live writer); run `dode artifacts gc`"


def try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on ``path`` (not created), or None when another process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def hold_lock(path: Path) -> int:
    """Create ``path`` and hold an exclusive lock on it; retried if a collector removed it meanwhile."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def staging_problem(root: Path) -> str | None:
    """Why ``root`` cannot serve as a staging directory (a symbolic link or not a directory); None when it can."""
    try:
        mode = root.lstat().st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(mode):
        return None
    what = "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"
    return (f"staging: {root} is {what}; dode writes and cleans partial files only in a real staging directory "
            "(nothing behind it is touched): remove it")


def check_staging(root: Path) -> None:
    """A ValueError when ``root`` is a symbolic link or not a directory (``staging_problem``)."""
    problem = staging_problem(root)
    if problem:
        raise ValueError(problem)


def owned(path: Path) -> bool:
    """Whether a staging entry is something a writer makes: a regular file or a real directory (not a link)."""
    mode = path.lstat().st_mode
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def tree_size(path: Path) -> int:
    if not stat.S_ISDIR(path.lstat().st_mode):
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir() or p.is_symlink())


def remove(path: Path) -> None:
    """Remove a staging entry: a real directory with everything in it (links removed, never followed), or a file."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def stale_entries(root: Path, *, now: float | None = None) -> list[Stale]:
    """Entries of the staging directory ``root`` that no live writer owns (see the module's stale rule); none
    when ``root`` is missing, a symbolic link or not a directory (``staging_problem`` reports that)."""
    if staging_problem(root):
        return []
    try:
        entries = sorted(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    now = time.time() if now is None else now
    names = {p.name for p in entries}
    out = []
    for path in entries:
        is_lock = path.name.endswith(LOCK_SUFFIX)
        if is_lock and path.name[: -len(LOCK_SUFFIX)] in names:
            continue  # reported with its area
        lock = path if is_lock else path.with_name(path.name + LOCK_SUFFIX)
        try:
            if not owned(path) or (lock.name in names and not owned(lock)):
                continue  # a link or a special file: not a writer's, reported by `verify`, never removed
            if lock.name in names:
                fd = try_lock(lock)
                if fd is None:
                    continue
                os.close(fd)
            elif now - path.lstat().st_mtime < LOOSE_AGE_S:
                continue
            out.append(Stale(path, tree_size(path)))
        except FileNotFoundError:
            continue  # removed meanwhile by its writer or another collector
    return out


def collect(root: Path) -> list[Stale]:
    """Remove the stale entries of ``root`` (an area before its lock, each under that lock); returns them.
    A ValueError when ``root`` is a symbolic link or not a directory: nothing is removed through it."""
    check_staging(root)
    removed = []
    for entry in stale_entries(root):
        path = entry.path
        lock = path if path.name.endswith(LOCK_SUFFIX) else path.with_name(path.name + LOCK_SUFFIX)
        if lock.exists() and owned(lock):
            fd = try_lock(lock)
            if fd is None:
                continue  # a writer took it over meanwhile
            try:
                remove(lock.with_name(lock.name[: -len(LOCK_SUFFIX)]))
                lock.unlink(missing_ok=True)
            finally:
                os.close(fd)
        else:
            remove(path)
        removed.append(entry)
    return removed


class StagingArea:
    """A private directory under ``root`` for one writer's partial files, removed on exit.

    Entering it first removes stale entries left by dead writers (``collect``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        token = uuid.uuid4().hex
        self.path = self.root / token
        self.lock = self.root / (token + LOCK_SUFFIX)
        self.fd: int | None = None

    def __enter__(self) -> Self:
        check_staging(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        collect(self.root)
        self.fd = hold_lock(self.lock)
        self.path.mkdir()
        return self

    def __exit__(self, *exc: object) -> None:
        remove(self.path)
        self.lock.unlink(missing_ok=True)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_partial(path: Path) -> int:
    """Create the partial file ``path`` and hold a lock on it while its writer lives."""
    return hold_lock(path)


def clean_partials(target: Path) -> list[Path]:
    """Remove ``.<name>.*.partial`` files next to ``target`` whose writer is gone (their lock is free)."""
    removed = []
    for path in target.parent.glob(f".{target.name}.*.partial"):
        fd = try_lock(path)
        if fd is None:
            continue
        try:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed
