"""``Registry.fetch`` (``dode artifacts get --out DIR``): every file verified, written only inside DIR
(artifacts with parts, written as PNGs, one .npz or every part's files: ``dode.store.export``).

Names come from a verified manifest (plain relative names, ``dode.store.manifest.check_name``); on top
of that no existing path component under DIR may be a symbolic link or a file, so nothing is written
outside DIR. Files are downloaded into a hidden folder in DIR and verified first, then renamed: a
tampered file leaves DIR as it was. A file already there with the same content is kept; other content is
refused unless ``force``.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .manifest import Artifact
from .reads import file_sha256

PART_KINDS = ("samples",)  # kinds whose index artifacts list parts of their own kind (dode.generate)


def writable_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".dode-probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write to {out} ({err}); choose another --out directory") from None


def destination(out: Path, name: str) -> Path:
    """``out/name``, refusing a symbolic link or a file among the directories on the way."""
    parts = name.split("/")
    folder = out
    for part in parts[:-1]:
        folder = folder / part
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ValueError(f"{folder} is a symbolic link or a file; `get` writes only inside {out}: remove it "
                             "or choose another --out directory")
    dest = folder / parts[-1]
    if dest.is_dir() and not dest.is_symlink():
        raise ValueError(f"{dest} is a directory; remove it or choose another --out directory")
    return dest


def needed(dest: Path, sha256: str, force: bool) -> bool:
    """Whether ``dest`` must be written: absent, or other content and ``force``."""
    if not (dest.exists() or dest.is_symlink()):
        return True
    if dest.is_file() and not dest.is_symlink() and file_sha256(dest) == sha256:
        return False
    if not force:
        raise ValueError(f"{dest} exists with other content; remove it or choose another --out directory, "
                         "or pass --force to overwrite it")
    return True


def fetch(reg: Any, art: Artifact, out: Path, *, force: bool = False) -> Path:
    """Download every file of ``art`` into ``out``: all verified in a hidden folder there, then moved into place."""
    writable_dir(out)
    plan = [(name, dest) for name, dest in ((n, destination(out, n)) for n in sorted(art.files))
            if needed(dest, art.files[name]["sha256"], force)]
    hidden = out / f".dode-get-{uuid.uuid4().hex}"
    hidden.mkdir()
    try:
        for i, (name, _) in enumerate(plan):
            reg.download(art, name, hidden / str(i))
        for i, (_, dest) in enumerate(plan):
            reg.install(hidden / str(i), dest)
    finally:
        shutil.rmtree(hidden, ignore_errors=True)
    return out


def has_parts(art: Artifact) -> bool:
    """Whether ``art`` is an index over parts of its own kind (a samples job or shard over its chunks)."""
    return art.kind in PART_KINDS and "index.json" in art.files


def parts(reg: Any, art: Artifact) -> list[Artifact]:
    """The parts of an index artifact: its parents of its own kind, each manifest verified."""
    return [p for p in (reg.get(i) for i in art.parents) if p.kind == art.kind]


@contextmanager
def hidden_dir(out: Path) -> Iterator[Path]:
    """A hidden working folder inside ``out`` (writable, checked), removed afterwards whatever happens."""
    writable_dir(out)
    hidden = out / f".dode-get-{uuid.uuid4().hex}"
    hidden.mkdir()
    try:
        yield hidden
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


def install_all(reg: Any, written: list[tuple[Path, str]], out: Path, force: bool) -> None:
    """Move files written (and verified) in a hidden folder to ``out/name``: same content kept, other content
    refused unless ``force`` (checked for every file before any is moved)."""
    plan = [(tmp, dest) for tmp, dest in ((tmp, destination(out, name)) for tmp, name in written)
            if needed(dest, file_sha256(tmp), force)]
    for tmp, dest in plan:
        dest.parent.mkdir(parents=True, exist_ok=True)
        reg.install(tmp, dest)
