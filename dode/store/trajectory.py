"""Teacher trajectories on disk: the one module that owns the Parquet format (``SCHEMA_VERSION``).

Long layout, one row per (stored grid index, sample), one row group per stored step (per step and
batch when a teacher runs in batches), uncompressed by default:

    step: int32 (index into the grid), sigma: float64, sample_id: int64 (seed or position),
    x: large_binary, exactly 4 * prod(shape) bytes a row (the float32 state, C order), denoised: same, nullable

The state is a fixed-shape float32 tensor (shape and dtype in the field metadata) stored as one binary
value per row, so a step is one contiguous buffer on read. On this machine that reads a step several
times faster than Arrow's canonical ``fixed_shape_tensor`` (a Parquet LIST whose per-value levels
dominate decoding) and writes ~1.8x faster than ``fixed_size_binary``; see bench/storage.py.
Schema metadata (``dode.trajectory``) holds the schema version, shape, dtype, dode version and the
caller's metadata (model fingerprint, grid, solver, teacher factor, seeds). The footer (``dode.index``,
written at close) lists every row group with its step, sigma and 64-bit word sums of its sample ids
and states, checked on every read, so a corrupted file raises instead of returning garbage. A writer
fills a hidden temporary file and renames it on close: a crashed run never leaves a readable file.
The writer does its Parquet work on its own thread, so the footer's and id checks' long-lived
allocations live in that thread's malloc arena, away from the caller's transient tensors; interleaved
in one arena they fragmented glibc's heap and peak memory grew with the sample count (bench/memory.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from typing_extensions import Self

from dode.common.bounded import load_json
from dode.core.types import Tensor
from dode.store.staging import clean_partials, lock_partial
from dode.version import __version__

SCHEMA_VERSION = 1
COMPRESSIONS = ("none", "zstd")
META_KEY = b"dode.trajectory"
INDEX_KEY = b"dode.index"
RESERVED_META = ("schema_version", "shape", "dtype", "denoised", "compression", "dode_version")


def word_sum(data: Any) -> str:
    """Sum of the little-endian 64-bit words of a buffer mod 2**64, and its byte length (hex).

    Memory-bandwidth fast; catches every single-bit flip and any overwritten or zeroed block.
    """
    b = np.frombuffer(data, np.uint8)
    n = len(b)
    if n % 8:
        b = np.concatenate([b, np.zeros(8 - n % 8, np.uint8)])
    return f"{int(b.view('<u8').sum(dtype=np.uint64)):016x}:{n}"


def trajectory_schema(shape: Sequence[int], meta: Mapping[str, Any], denoised: bool) -> pa.Schema:
    state_meta = {"dode.shape": json.dumps(list(shape)), "dode.dtype": "float32"}
    fields = [
        pa.field("step", pa.int32(), nullable=False),
        pa.field("sigma", pa.float64(), nullable=False),
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("x", pa.large_binary(), nullable=False, metadata=state_meta),
    ]
    if denoised:
        fields.append(pa.field("denoised", pa.large_binary(), nullable=True, metadata=state_meta))
    return pa.schema(fields, metadata={META_KEY: json.dumps(dict(meta), sort_keys=True)})


def as_float32(x: Tensor | np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A C-contiguous float32 numpy array of shape (n, *shape), from a tensor or array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape:
        raise ValueError(f"{what} has shape {tuple(arr.shape)}; expected (samples, {', '.join(map(str, shape))})")
    return arr


def states_column(arr: np.ndarray | None, n: int) -> pa.Array:
    """One binary value per sample over the states' own memory (no copy); all nulls when ``arr`` is None."""
    if arr is None:
        return pa.nulls(n, pa.large_binary())
    offsets = np.arange(n + 1, dtype=np.int64) * (arr.nbytes // n)
    return pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(arr)])


class IdRuns:
    """A set of int64 ids as sorted, disjoint, non-adjacent runs ``[first, last]``.

    Memory grows with the number of runs, not of ids: a contiguous seed range written in any number of
    batches stays one run.
    """

    def __init__(self) -> None:
        self.first = np.empty(0, np.int64)
        self.last = np.empty(0, np.int64)

    def add(self, ids: np.ndarray) -> bool:
        """Add sorted unique ``ids``; False (and nothing added) when one of them is already in the set."""
        if not len(ids):
            return True
        starts = np.flatnonzero(ids[1:] - 1 != ids[:-1]) + 1
        first, last = ids[np.r_[0, starts]], ids[np.r_[starts - 1, len(ids) - 1]]
        # overlap: the last held run starting at or before a new run's end reaches into it
        before = np.searchsorted(self.first, last, side="right") - 1
        held = before >= 0
        if np.any(self.last[before[held]] >= first[held]):
            return False
        # merge, then join runs that touch
        first, last = np.concatenate([self.first, first]), np.concatenate([self.last, last])
        order = np.argsort(first, kind="stable")
        first, last = first[order], last[order]
        opens = np.r_[True, first[1:] - 1 != last[:-1]]
        self.first, self.last = first[opens], last[np.r_[opens[1:], True]]
        return True


class TrajectoryWriter:
    """Streaming writer: ``write_step`` appends one row group; nothing but the current step is held.

    ``meta`` is JSON metadata (by convention: model, sigmas, solver, teacher_factor, seeds); the writer
    adds the schema version, shape, dtype and dode version. The file appears at ``path`` on ``close``.
    Every call runs to completion on the writer's own thread before it returns (errors included).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shape: Sequence[int],
        meta: Mapping[str, Any] | None = None,
        *,
        denoised: bool = False,
        compression: str = "none",
        compression_level: int | None = None,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {compression!r}; choose one of {list(COMPRESSIONS)}")
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or min(self.shape) < 1:
            raise ValueError(f"shape must be one sample's shape with positive sizes, e.g. (1, 8, 8); got {shape}")
        meta = dict(meta or {})
        clash = sorted(set(meta) & set(RESERVED_META))
        if clash:
            raise ValueError(f"meta keys {clash} are set by the writer; rename them")
        self.meta = {**meta, "schema_version": SCHEMA_VERSION, "shape": list(self.shape), "dtype": "float32",
                     "denoised": denoised, "compression": compression, "dode_version": __version__}
        try:
            schema = trajectory_schema(self.shape, self.meta, denoised)
        except TypeError as err:
            raise ValueError(f"trajectory meta must be JSON-serialisable: {err}") from None
        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self.denoised = denoised
        self.index: list[dict[str, Any]] = []
        self.seen: dict[int, IdRuns] = {}  # per step: the sample ids written so far
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean_partials(self.path)  # left by killed writers of this file (dode.store.staging)
        self.lock: int | None = lock_partial(self.partial)  # held while this writer lives
        self.thread: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="dode-trajectory")
        try:
            self.writer: pq.ParquetWriter | None = self.on_thread(
                pq.ParquetWriter, self.partial, schema, compression=compression,
                compression_level=compression_level, use_dictionary=False, write_statistics=["step", "sample_id"],
            )
        except BaseException:
            self.stop_thread()
            self.partial.unlink(missing_ok=True)
            raise

    def on_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the writer's thread; returns its result or raises its error."""
        if self.thread is None:
            raise ValueError(f"trajectory writer for {self.path} is closed")
        return self.thread.submit(fn, *args, **kwargs).result()

    def write_step(
        self,
        step: int,
        x: Tensor | np.ndarray,
        *,
        sigma: float | None = None,
        sample_ids: Sequence[int] | np.ndarray | Tensor | None = None,
        denoised: Tensor | np.ndarray | None = None,
    ) -> None:
        """Append the states ``x`` (n, *shape) at grid index ``step`` as one row group.

        ``sigma`` defaults to ``meta["sigmas"][step]``; ``sample_ids`` to 0..n-1 (pass them when a
        step is written in several batches); ``denoised`` is D(x; sigma) when the writer stores it.
        """
        self.on_thread(self.append, step, x, sigma, sample_ids, denoised)

    def append(
        self,
        step: int,
        x: Tensor | np.ndarray,
        sigma: float | None,
        sample_ids: Sequence[int] | np.ndarray | Tensor | None,
        denoised: Tensor | np.ndarray | None,
    ) -> None:
        if self.writer is None:
            raise ValueError(f"trajectory writer for {self.path} is closed")
        if not 0 <= int(step) < 2**31:
            raise ValueError(f"step must be a grid index (a non-negative integer), got {step}")
        arr = as_float32(x, self.shape, f"the states of step {step}")
        n = len(arr)
        sigma = self.sigma_of(step) if sigma is None else float(sigma)
        ids = np.arange(n, dtype=np.int64) if sample_ids is None else np.ascontiguousarray(
            torch.as_tensor(sample_ids).cpu().numpy() if isinstance(sample_ids, torch.Tensor) else sample_ids, np.int64)
        if ids.shape != (n,):
            raise ValueError(f"{len(ids)} sample ids for {n} states at step {step}")
        new = np.unique(ids)
        if len(new) != n or not self.seen.setdefault(int(step), IdRuns()).add(new):
            raise ValueError(f"step {step}: sample ids repeat (within the batch or with an earlier batch)")
        if denoised is not None and not self.denoised:
            raise ValueError("this writer was opened with denoised=False; open it with denoised=True to store D(x)")
        den = None if denoised is None else as_float32(denoised, self.shape, f"the denoised of step {step}")
        if den is not None and len(den) != n:
            raise ValueError(f"{len(den)} denoised outputs for {n} states at step {step}")
        columns = {
            "step": pa.array(np.full(n, step, np.int32)),
            "sigma": pa.array(np.full(n, sigma, np.float64)),
            "sample_id": pa.array(ids),
            "x": states_column(arr, n),
        }
        if self.denoised:
            columns["denoised"] = states_column(den, n)
        self.writer.write_table(pa.table(columns, schema=self.writer.schema), row_group_size=n)
        self.index.append({"step": int(step), "sigma": sigma, "rows": n, "sample_id": word_sum(ids),
                           "x": word_sum(arr), "denoised": None if den is None else word_sum(den)})

    def sigma_of(self, step: int) -> float:
        sigmas = self.meta.get("sigmas")
        if sigmas is None or not 0 <= step < len(sigmas):
            raise ValueError(f"pass sigma= for step {step}, or put the grid in meta['sigmas']")
        return float(sigmas[step])

    def close(self) -> Path:
        """Write the footer index and move the finished file to ``path``."""
        if self.writer is not None:
            self.on_thread(self.finish)
        self.stop_thread()
        return self.path

    def finish(self) -> None:
        index = json.dumps({"row_groups": self.index, "meta_sha256": meta_digest(self.writer.schema)})
        self.writer.add_key_value_metadata({INDEX_KEY: index})
        self.writer.close()
        self.writer = None
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Drop the unfinished file."""
        if self.writer is not None:
            self.on_thread(self.writer.close)
            self.writer = None
        self.stop_thread()
        self.partial.unlink(missing_ok=True)

    def stop_thread(self) -> None:
        if self.thread is not None:
            self.thread.shutdown()
            self.thread = None
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.abort() if kind is not None else self.close()


def meta_digest(schema: pa.Schema) -> str:
    return hashlib.sha256((schema.metadata or {}).get(META_KEY, b"")).hexdigest()


@dataclass(frozen=True)
class Trajectory:
    """Stored states: ``x[i]`` (n, *shape) float32 at grid index ``steps[i]`` (noise level ``sigmas[i]``)."""

    steps: tuple[int, ...]
    sigmas: Tensor  # (S,) float64
    sample_ids: Tensor  # (n,) int64
    x: Tensor  # (S, n, *shape) float32
    meta: dict[str, Any] = field(default_factory=dict)
    denoised: Tensor | None = None  # (S, n, *shape) float32 when read with denoised=True

    def at(self, step: int) -> Tensor:
        """The states at grid index ``step``."""
        if step not in self.steps:
            raise ValueError(f"step {step} was not read; read steps are {list(self.steps)}")
        return self.x[self.steps.index(step)]


class TrajectoryFile:
    """A trajectory opened for reading; the footer index and metadata are validated on open."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no trajectory at {self.path}")
        try:
            self.file = pq.ParquetFile(self.path, memory_map=True)
            kv = self.file.metadata.metadata or {}
            meta = load_json(kv[META_KEY], "its metadata")
            index = load_json(kv[INDEX_KEY], "its index")
        except KeyError:
            raise self.broken("it has no dode trajectory metadata (not written by TrajectoryWriter)") from None
        except (pa.ArrowException, OSError, ValueError) as err:
            raise self.broken(f"truncated or corrupted ({err})") from None
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{self.path}: trajectory schema version {meta.get('schema_version')!r}, this dode "
                f"{__version__} reads version {SCHEMA_VERSION}; re-create it with dode.distillation.teacher_parquet.write_teacher"
            )
        if index.get("meta_sha256") != meta_digest(self.file.schema_arrow):
            raise self.broken("its metadata does not match the checksum in its footer")
        self.meta: dict[str, Any] = meta
        self.shape = tuple(meta["shape"])
        self.row_groups: list[dict[str, Any]] = index["row_groups"]
        if len(self.row_groups) != self.file.num_row_groups:
            raise self.broken(f"its footer lists {len(self.row_groups)} row groups, the file has {self.file.num_row_groups}")
        self.by_step: dict[int, list[int]] = {}
        for i, rg in enumerate(self.row_groups):
            self.by_step.setdefault(rg["step"], []).append(i)

    def broken(self, why: str) -> ValueError:
        return ValueError(f"{self.path} is not a readable dode trajectory: {why}; re-create it or re-fetch it "
                          "(`dode artifacts get` verifies sha256)")

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(sorted(self.by_step))

    def sigma(self, step: int) -> float:
        return self.row_groups[self.groups(step)[0]]["sigma"]

    def groups(self, step: int) -> list[int]:
        if step not in self.by_step:
            raise ValueError(f"step {step} is not stored in {self.path}; stored steps: {list(self.steps)}")
        return self.by_step[step]

    def read_group(self, i: int, denoised: bool) -> tuple[np.ndarray, np.ndarray]:
        """Row group i as (sample ids, states (rows, *shape)), every column checked against the footer."""
        rg = self.row_groups[i]
        column = "denoised" if denoised else "x"
        if denoised and rg.get("denoised") is None:
            raise ValueError(f"{self.path}: no denoiser output stored for step {rg['step']} "
                             "(no network evaluation at that state, or written with denoised=False)")
        try:
            table = self.file.read_row_group(i, columns=["step", "sigma", "sample_id", column], use_threads=False)
        except (pa.ArrowException, OSError) as err:
            raise self.broken(f"row group {i} (step {rg['step']}) is unreadable ({err})") from None
        n = rg["rows"]
        ids = table.column("sample_id").combine_chunks()
        states = table.column(column).combine_chunks()
        if (table.num_rows != n or states.null_count
                or not (table.column("step").to_numpy() == rg["step"]).all()
                or not (table.column("sigma").to_numpy() == rg["sigma"]).all()):
            raise self.broken(f"row group {i} (step {rg['step']}) does not match its footer entry")
        ids_np = np.frombuffer(ids.buffers()[1], np.int64, n, ids.offset * 8)
        width = 4 * int(np.prod(self.shape))
        offsets = np.frombuffer(states.buffers()[1], np.int64, n + 1, states.offset * 8)
        if not (np.diff(offsets) == width).all():
            raise self.broken(f"step {rg['step']} ({column}) holds states of the wrong size")
        raw = np.frombuffer(states.buffers()[2], np.uint8, n * width, int(offsets[0]))
        for name, data in (("sample_id", ids_np), (column, raw)):
            if word_sum(data) != rg[name]:
                raise self.broken(f"step {rg['step']} ({name}) fails its checksum")
        x = raw.view(np.float32).reshape(n, *self.shape)
        return ids_np, x if x.flags.writeable else x.copy()

    def read(self, step: int, samples: Iterable[int] | None = None, *, denoised: bool = False) -> tuple[Tensor, Tensor]:
        """(sample ids (n,), states (n, *shape) float32) at grid index ``step``, optionally only ``samples``."""
        parts = [self.read_group(i, denoised) for i in self.groups(step)]
        ids = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        x = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
        if samples is not None:
            rows = select_rows(ids, samples, step)
            ids, x = ids[rows], x[rows]
        return torch.from_numpy(np.array(ids)), torch.from_numpy(x)

    def read_steps(
        self, steps: Iterable[int] | None = None, samples: Iterable[int] | None = None, *, denoised: bool = False
    ) -> Trajectory:
        """The states at ``steps`` (default: all stored) for ``samples`` (sample ids; default: all)."""
        steps = self.steps if steps is None else tuple(int(s) for s in steps)
        if not steps:
            raise ValueError(f"no steps to read; stored steps: {list(self.steps)}")
        samples = None if samples is None else list(samples)
        ids, xs, dens = None, [], []
        for step in steps:
            step_ids, x = self.read(step, samples)
            if ids is None:
                ids = step_ids
            elif not torch.equal(ids, step_ids):
                raise ValueError(f"{self.path}: step {step} holds other samples than step {steps[0]}; pass samples=")
            xs.append(x)
            if denoised:
                dens.append(self.read(step, samples, denoised=True)[1])
        sigmas = torch.tensor([self.sigma(s) for s in steps], dtype=torch.float64)
        return Trajectory(steps, sigmas, ids, torch.stack(xs), dict(self.meta), torch.stack(dens) if denoised else None)

    def verify(self) -> None:
        """Read and check every row group; raises ValueError on the first problem."""
        for i, rg in enumerate(self.row_groups):
            self.read_group(i, False)
            if rg.get("denoised") is not None:
                self.read_group(i, True)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def select_rows(ids: np.ndarray, samples: Iterable[int], step: int) -> np.ndarray:
    """Row positions of ``samples`` among ``ids``, in the order asked; a ValueError names missing ones."""
    wanted = np.asarray(list(samples), dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], wanted)
    pos = np.minimum(pos, len(ids) - 1)
    found = ids[order[pos]] == wanted
    if not found.all():
        missing = wanted[~found][:5].tolist()
        raise ValueError(f"samples {missing} are not stored at step {step}; stored sample ids span "
                         f"{int(ids.min())}..{int(ids.max())} ({len(ids)} samples)")
    return order[pos]


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The trajectory's metadata, plus the stored ``steps``."""
    with TrajectoryFile(path) as f:
        return {**f.meta, "steps": list(f.steps)}


def read_step(path: str | os.PathLike, step: int, samples: Iterable[int] | None = None) -> Tensor:
    """The float32 states (n, *shape) at grid index ``step``."""
    with TrajectoryFile(path) as f:
        return f.read(step, samples)[1]


def read_steps(
    path: str | os.PathLike, steps: Iterable[int] | None = None, samples: Iterable[int] | None = None,
    *, denoised: bool = False,
) -> Trajectory:
    """The states at ``steps`` (default all) for ``samples`` (sample ids, default all)."""
    with TrajectoryFile(path) as f:
        return f.read_steps(steps, samples, denoised=denoised)


def read_artifact(
    reg: Any, ref: Any, name: str, steps: Iterable[int] | None = None, samples: Iterable[int] | None = None,
    *, denoised: bool = False,
) -> Trajectory:
    """``read_steps`` of the trajectory file ``name`` of a registry artifact, verified against its sha256 and
    size first (``Registry.local_path``), local registry or remote alike."""
    return read_steps(reg.local_path(ref, name), steps, samples, denoised=denoised)
