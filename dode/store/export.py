"""A samples artifact (job or shard: an index over chunk artifacts) written out for people: a PNG per seed, one
``.npz``, or every part's files -- each chunk read through the registry's verified reads, all-or-nothing
(``dode artifacts get --format``). Kept apart from ``fetch`` (plain artifacts), which the registry itself uses:
this module reads samples through ``dode.generate``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import progress
from ..generate import iter_samples
from ..images import write_png
from .fetch import hidden_dir, install_all, parts
from .manifest import Artifact


def sample_chunks(reg: Any, art: Artifact) -> Iterator[tuple[range, np.ndarray]]:
    """(seeds, uint8 images) of a samples index, chunk by chunk, every chunk read verified and its size checked,
    with a progress bar over the samples."""
    start, stop = art.params["seeds"]
    with progress.bar(stop - start, f"get {art.short}", "sample") as bar:
        for seeds, images in iter_samples(reg, art):
            if len(images) != len(seeds):
                raise ValueError(f"samples {art.short}: a chunk holds {len(images)} images for {len(seeds)} seeds; "
                                 "the registry is inconsistent: run `dode artifacts verify`")
            yield seeds, images
            bar.update(len(seeds))


def write_pngs(reg: Any, art: Artifact, out: Path, force: bool = False) -> tuple[int, str]:
    """A samples job or shard as ``out/<seed>.png`` (zero-padded to 6 digits), all-or-nothing."""
    with hidden_dir(out) as hidden:
        written = []
        for seeds, images in sample_chunks(reg, art):
            names = [f"{s:06d}.png" for s in seeds]
            written += [(p, n) for p, n in zip(write_png(images, hidden, names), names)]
        install_all(reg, written, out, force)
    return len(written), "PNG(s)"


def write_npz(reg: Any, art: Artifact, out: Path, force: bool = False) -> tuple[int, str]:
    """A samples job or shard as ``out/samples.npz``: ``images`` uint8 (N, C, H, W) and ``seeds`` (N,), written
    chunk by chunk into the .npy inside (memory: one chunk)."""
    start, stop = art.params["seeds"]
    with hidden_dir(out) as hidden:
        npy, seeds, done = None, np.arange(start, stop, dtype=np.int64), 0
        for chunk_seeds, images in sample_chunks(reg, art):
            if npy is None:
                npy = np.lib.format.open_memmap(hidden / "images.npy", "w+", np.uint8, (len(seeds), *images.shape[1:]))
            npy[done : done + len(images)] = images
            seeds[done : done + len(images)] = np.asarray(chunk_seeds)
            done += len(images)
        npy.flush()
        del npy
        np.save(hidden / "seeds.npy", seeds)
        with zipfile.ZipFile(hidden / "samples.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name in ("images.npy", "seeds.npy"):
                z.write(hidden / name, name)
        install_all(reg, [(hidden / "samples.npz", "samples.npz")], out, force)
    return done, "sample(s) in samples.npz"


def fetch_parts(reg: Any, art: Artifact, out: Path, force: bool = False) -> tuple[int, str]:
    """The index's own files into ``out`` and each part's files into ``out/parts/<part id>/``, all verified."""
    pieces = parts(reg, art)
    reg.fetch(art, out, force=force)
    with progress.bar(len(pieces), f"get {art.short}", "part") as bar:
        for part in pieces:
            reg.fetch(part, out / "parts" / part.id, force=force)
            bar.update(1)
    return len(pieces), f"part(s) (and {', '.join(sorted(art.files))})"
