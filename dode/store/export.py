"""A samples artifact (job or shard: an index over chunk artifacts) written out for people: a PNG per seed, one
``.npz``, or every part's files -- each chunk read through the registry's verified reads, all-or-nothing
(``dode artifacts get --format``). Kept apart from ``fetch`` (plain artifacts), which the registry itself uses:
this module reads samples through ``dode.store.samples``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dode.common import progress
from dode.common.images import write_png
from dode.store.fetch import fetch_all, hidden_dir, install_all, parts
from dode.store.manifest import Artifact
from dode.store.samples import chunk_list, iter_samples


def sample_chunks(reg: Any, art: Artifact) -> Iterator[tuple[range, np.ndarray]]:
    """(seeds, uint8 images) of a samples index, chunk by chunk, every chunk read verified and its size checked,
    with a progress bar over the samples."""
    total = sum(len(seeds) for _, seeds in chunk_list(reg, art))
    with progress.bar(total, f"get {art.short}", "sample") as bar:
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
        install_all(written, out, force)
    return len(written), "PNG(s)"


def write_npz(reg: Any, art: Artifact, out: Path, force: bool = False) -> tuple[int, str]:
    """A samples job or shard as ``out/samples.npz``: ``images`` uint8 (N, C, H, W) and ``seeds`` (N,)."""
    with hidden_dir(out) as hidden:
        seeds = images_npy(reg, art, hidden / "images.npy")
        np.save(hidden / "seeds.npy", seeds)
        with zipfile.ZipFile(hidden / "samples.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name in ("images.npy", "seeds.npy"):
                z.write(hidden / name, name)
        install_all([(hidden / "samples.npz", "samples.npz")], out, force)
    return len(seeds), "sample(s) in samples.npz"


def images_npy(reg: Any, art: Artifact, path: Path) -> np.ndarray:
    """The images of a samples index as the .npy file ``path``, written chunk by chunk through the file (memory:
    one chunk; never a memory map, which a full disk turns into SIGBUS); returns their seeds."""
    chunks = chunk_list(reg, art)
    seeds, shape, done = np.empty(0, dtype=np.int64), None, 0
    with open(path, "xb") as f:
        for chunk_seeds, images in sample_chunks(reg, art):
            if shape is None:
                shape = images.shape[1:]
                seeds = npy_header(reg, chunks, shape, f)
            if images.shape[1:] != shape or images.dtype != np.uint8:
                raise ValueError(f"samples {art.short}: its chunks hold images of different shapes or types; the "
                                 "registry is inconsistent: run `dode artifacts verify`")
            f.write(np.ascontiguousarray(images).data)
            seeds[done : done + len(images)] = np.asarray(chunk_seeds)
            done += len(images)
    return seeds


def npy_header(reg: Any, chunks: list[tuple[str, range]], shape: tuple[int, ...], f: Any) -> np.ndarray:
    """Write the header of the images .npy (uint8, (n, *shape)) and return the seeds array to fill, sized from the
    chunk list once its seeds are checked against the bytes the chunks' files hold (a forged index cannot ask
    for a larger file)."""
    n = sum(len(seeds) for _, seeds in chunks)
    held = sum(reg.get(cid).files.get("images.npy", {}).get("size", 0) for cid, _ in chunks)
    if n * int(np.prod(shape)) > held:
        raise ValueError(f"samples index lists {n} seeds, more than its chunks' {held} bytes of images hold; the "
                         "registry is inconsistent: run `dode artifacts verify`")
    np.lib.format.write_array_header_2_0(f, {"descr": "|u1", "fortran_order": False, "shape": (n, *shape)})
    return np.empty(n, dtype=np.int64)


def fetch_parts(reg: Any, art: Artifact, out: Path, force: bool = False) -> tuple[int, str]:
    """The index's own files into ``out`` and each part's files into ``out/parts/<part id>/``, all verified."""
    pieces = parts(reg, art)
    fetch_all(reg, [(art, ""), *((p, f"parts/{p.id}/") for p in pieces)], out, force=force)
    return len(pieces), f"part(s) (and {', '.join(sorted(art.files))})"
