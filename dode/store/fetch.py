"""``Registry.fetch`` (``dode artifacts get --out DIR``): every file verified, written only inside DIR
(artifacts with parts, written as PNGs, one .npz or every part's files: ``dode.store.export``).

An output folder (``--out``, ``--png-dir``) is checked first (``output_dir``): a symbolic link, a file, or a
folder inside a registry is refused. Names come from a verified manifest (plain relative names,
``dode.store.manifest.check_name``); on top of that no existing path component under DIR may be a symbolic
link or a file, and every name must fit the file system, so nothing is written outside DIR and nothing
fails half-way. Files are downloaded into a staging area of DIR (``DIR/.dode-get/``, ``dode.store.staging``:
an interrupted download is removed by the next one into DIR, or by ``dode artifacts gc --out DIR``) and
verified first, then renamed: a tampered file leaves DIR as it was. A file already there with the same
content is kept; other content is refused unless ``force`` (checked for every file before any is moved).
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dode.common import progress
from dode.store.manifest import HEX64, Artifact
from dode.store.reads import VerifiedReads, file_sha256
from dode.store.staging import StagingArea, Stale, collect

PART_KINDS = ("samples",)  # kinds whose index artifacts list parts of their own kind (dode.pipeline.generate)
HIDDEN = ".dode-get"  # the staging directory of downloads inside an output folder


def registry_root(path: Path) -> Path | None:
    """The registry that holds ``path`` (``path`` or a parent with an ``artifacts/`` folder of artifact ids)."""
    for folder in (path, *path.parents):
        try:
            with os.scandir(folder / "artifacts") as entries:
                if any(HEX64.fullmatch(e.name) for e in entries):
                    return folder
        except OSError:
            continue
    return None


def output_dir(out: Path) -> Path:
    """``out`` checked as an output folder and created: not a symbolic link, not a file, not inside a registry
    (one ValueError saying what to do otherwise), and writable."""
    if out.is_symlink():
        raise ValueError(f"{out} is a symbolic link; dode writes only into a real folder: give the folder itself")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder; choose another output folder")
    root = registry_root(out.resolve())
    if root is not None:
        raise ValueError(f"{out} is inside the registry {root}; the registry is written only by publishing: "
                         "choose an output folder outside it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".dode-probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write to {out} ({err}); choose another output folder") from None
    return out


def destination(out: Path, name: str) -> Path:
    """``out/name``, refusing a name the file system cannot hold and a symbolic link or a file among the
    directories on the way."""
    limit = os.pathconf(out, "PC_NAME_MAX")
    long = next((p for p in name.split("/") if len(os.fsencode(p)) > limit), None)
    if long is not None:
        raise ValueError(f"file name {long[:40]!r}... is longer than this file system holds ({limit} bytes) in "
                         f"{out}; nothing was written")
    parts = name.split("/")
    folder = out
    for part in parts[:-1]:
        folder = folder / part
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ValueError(f"{folder} is a symbolic link or a file; dode writes only inside {out}: remove it "
                             "or choose another output folder")
    dest = folder / parts[-1]
    if dest.is_dir() and not dest.is_symlink():
        raise ValueError(f"{dest} is a directory; remove it or choose another output folder")
    return dest


def needed(dest: Path, sha256: str, force: bool) -> bool:
    """Whether ``dest`` must be written: absent, or other content (a link counts as other) and ``force``."""
    if not (dest.exists() or dest.is_symlink()):
        return True
    if dest.is_file() and not dest.is_symlink() and file_sha256(dest) == sha256:
        return False
    if not force:
        raise ValueError(f"{dest} exists with other content; remove it or choose another output folder, "
                         "or pass --force to overwrite it")
    return True


@contextmanager
def hidden_dir(out: Path) -> Iterator[Path]:
    """A staging area inside the checked output folder ``out`` (``output_dir``), removed afterwards whatever
    happens; entering it removes what interrupted downloads left there."""
    output_dir(out)
    try:
        with StagingArea(out / HIDDEN) as area:
            yield area.path
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise OSError(f"no space left on the device of {out}; free some or choose another folder (nothing was "
                      f"written into {out})") from None
    finally:
        try:
            (out / HIDDEN).rmdir()
        except OSError:
            pass  # another download into ``out`` is running


def clean_downloads(out: Path) -> list[Stale]:
    """Remove what interrupted downloads left in ``out`` (their writers are gone); returns it."""
    if not (out / HIDDEN).exists() and not (out / HIDDEN).is_symlink():
        return []
    removed = collect(out / HIDDEN)
    try:
        (out / HIDDEN).rmdir()
    except OSError:
        pass
    return removed


def fetch_all(reg: Any, items: Sequence[tuple[Artifact, str]], out: Path, *, force: bool = False) -> int:
    """Every file of each (artifact, prefix) into ``out/<prefix><name>``, all verified before any is moved into
    place; returns the number of files written."""
    with hidden_dir(out) as hidden:
        plan = [(art, name, dest) for art, prefix in items for name in sorted(art.files)
                for dest in (destination(out, prefix + name),) if needed(dest, art.files[name]["sha256"], force)]
        with progress.bar(len(plan), f"get {items[0][0].short}", "file") as bar:
            for i, (art, name, _) in enumerate(plan):
                reg.download(art, name, hidden / str(i))
                bar.update(1)
        for i, (_, _, dest) in enumerate(plan):
            reg.install(hidden / str(i), dest)
    return len(plan)


def fetch(reg: Any, art: Artifact, out: Path, *, force: bool = False) -> Path:
    """Download every file of ``art`` into ``out``: all verified in a staging area there, then moved into place."""
    fetch_all(reg, [(art, "")], out, force=force)
    return out


def has_parts(art: Artifact) -> bool:
    """Whether ``art`` is an index over parts of its own kind (a samples job or shard over its chunks)."""
    return art.kind in PART_KINDS and "index.json" in art.files


def parts(reg: Any, art: Artifact) -> list[Artifact]:
    """The parts of an index artifact: its parents of its own kind, each manifest verified."""
    return [p for p in (reg.get(i) for i in art.parents) if p.kind == art.kind]


def install_all(written: list[tuple[Path, str]], out: Path, force: bool) -> None:
    """Move files written (and verified) in a hidden folder to ``out/name``: same content kept, other content
    refused unless ``force`` (checked for every file before any is moved); a link in the way is replaced, never
    written through."""
    plan = [(tmp, dest) for tmp, dest in ((tmp, destination(out, name)) for tmp, name in written)
            if needed(dest, file_sha256(tmp), force)]
    for tmp, dest in plan:
        VerifiedReads.install(tmp, dest)


def write_files(files: Mapping[str, bytes], out: Path, force: bool = False) -> int:
    """Files made here (name -> content) into the output folder ``out`` by the rule of every download (checked
    folder, staged, all-or-nothing, no link written through); returns how many were written or kept."""
    with hidden_dir(out) as hidden:
        written = []
        for i, (name, content) in enumerate(files.items()):
            (hidden / str(i)).write_bytes(content)
            written.append((hidden / str(i), name))
        install_all(written, out, force)
    return len(written)
