"""The samples format, read: a "samples" artifact is a chunk (``images.npy``, uint8 (B, C, H, W), params
``seeds`` = [start, stop)) or an index over chunks (``index.json``, schema ``SAMPLES_SCHEMA_VERSION``; its chunks
are also its parents). ``dode.pipeline.generate`` writes them; everything that reads samples reads them here, every
field checked before it reaches the file system or an allocation.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np

from dode.core.rng import MAX_SEED

SAMPLES_SCHEMA_VERSION = 1
NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
MAX_CHUNKS = 100_000  # chunks per job: each is an artifact, listed in memory and in the job's index


def seed_range(value: Any, what: str) -> range:
    """A stored ``[start, stop)`` seed pair as a range: two integers, 0 <= start < stop <= MAX_SEED + 1."""
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)
            and 0 <= value[0] < value[1] <= MAX_SEED + 1):
        raise ValueError(f"{what}: seeds {str(value)[:60]} are not [start, stop) with 0 <= start < stop; the registry "
                         "is inconsistent: run `dode artifacts verify`")
    return range(*value)


def chunk_list(registry: Any, art_or_id: Any) -> list[tuple[str, range]]:
    """(chunk id, seeds) of a samples artifact, every field checked: a chunk's own seeds, or an index's chunks
    (at most MAX_CHUNKS, each a parent of the index with valid seeds)."""
    art = registry.get(art_or_id) if isinstance(art_or_id, str) else art_or_id
    if art.kind != "samples":
        raise ValueError(f"artifact {art.id[:12]} is a {art.kind!r} artifact, not 'samples'")
    what = f"samples {art.id[:12]}"
    if "images.npy" in art.files:
        return [(art.id, seed_range(art.params.get("seeds"), what))]
    index = registry.read_json(art, "index.json")
    if not isinstance(index, dict) or index.get("schema_version") != SAMPLES_SCHEMA_VERSION:
        version = index.get("schema_version") if isinstance(index, dict) else None
        raise ValueError(f"samples index schema_version {version!r}, this dode reads "
                         f"{SAMPLES_SCHEMA_VERSION}; resample with this version of dode")
    chunks = index.get("chunks")
    if not (isinstance(chunks, list) and 0 < len(chunks) <= MAX_CHUNKS and all(
            isinstance(c, dict) and c.get("id") in art.parents for c in chunks)):
        raise ValueError(f"{what}: its index must list 1 to {MAX_CHUNKS} chunks, each a parent of the index; the "
                         "registry is inconsistent: run `dode artifacts verify`")
    return [(c["id"], seed_range(c.get("seeds"), what)) for c in chunks]


def load_images(data: bytes, what: str) -> np.ndarray:
    """uint8 (B, C, H, W) images from .npy bytes, the header checked against the bytes before anything is
    allocated (a forged header cannot ask for more memory than the file holds)."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        shape, fortran, dtype = NPY_HEADERS[version](buf)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{what} is not a .npy array ({err})") from None
    if dtype != np.uint8 or len(shape) != 4 or fortran or int(np.prod(shape)) != len(data) - buf.tell():
        raise ValueError(f"{what} declares {dtype} {shape}, not the uint8 (B, C, H, W) its {len(data)} bytes hold")
    return np.frombuffer(data, np.uint8, offset=buf.tell()).reshape(shape).copy()


def iter_samples(registry: Any, art_or_id: Any) -> Iterator[tuple[range, np.ndarray]]:
    """(seeds, uint8 (B, C, H, W) images) chunk by chunk: memory bounded by one chunk. A missing or damaged
    chunk raises one ValueError saying how to recompute it."""
    for chunk_id, seeds in chunk_list(registry, art_or_id):
        try:
            data = registry.read_bytes(chunk_id, "images.npy")
        except ValueError as err:
            raise ValueError(f"samples chunk {chunk_id[:12]} (seeds {seeds.start}..{seeds.stop - 1}) cannot be read: "
                             f"{err}. Rerun the sampling job to recompute it (only missing or damaged chunks are "
                             "computed again): `dode sample` with the same settings, or the flow with "
                             "PREFECT_TASKS_REFRESH_CACHE=true (its cached result trusts the job's index)") from None
        yield seeds, load_images(data, f"samples {chunk_id[:12]}: images.npy")


def load_samples(registry: Any, art_or_id: Any) -> np.ndarray:
    """All images of a samples artifact (chunk, shard or job), uint8 (N, C, H, W), in seed order."""
    return np.concatenate([images for _, images in iter_samples(registry, art_or_id)])
