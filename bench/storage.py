"""Trajectory store throughput as a ratio to raw numpy on the same array (target: >= 0.5x).

Write: ``TrajectoryWriter`` streaming every step (one row group each) vs ``numpy.save`` of the whole
(steps, samples, *shape) float32 array. Read: ``read_step`` (open, read one step, verify its checksums)
vs ``numpy.load`` of that step's own .npy file. Files live in --dir, page cache warm; each pair runs
alternately --repeats times and the minimum counts, so a loaded machine skews both alike.
The canonical Arrow ``fixed_shape_tensor`` layout and pyarrow writing the state column alone (the
Parquet encoding's own cost) are timed the same way, for reference.

    .venv/bin/python bench/storage.py
    .venv/bin/python bench/storage.py --samples 4096 --steps 8 --shape 3 32 32 --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dode.store.trajectory import TrajectoryWriter, read_step, states_column


def paired(ours, baseline, repeats: int, setup=lambda: None) -> tuple[float, float]:
    """Min seconds of ``ours`` and of ``baseline``, run alternately so both see the same machine load."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((ours, times[0]), (baseline, times[1])):
            setup()
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def write_dode(path: Path, x: np.ndarray, compression: str) -> None:
    with TrajectoryWriter(path, x.shape[2:], {"solver": "bench"}, compression=compression) as w:
        for k, xk in enumerate(x):
            w.write_step(k, xk, sigma=float(len(x) - k))


def write_arrow_tensor(path: Path, x: np.ndarray) -> None:
    """The canonical Arrow layout (fixed_shape_tensor over fixed_size_list), same writer options."""
    kind = pa.fixed_shape_tensor(pa.float32(), x.shape[2:])
    schema = pa.schema([("step", pa.int32()), ("sample_id", pa.int64()), ("x", kind)])
    with pq.ParquetWriter(path, schema, compression="none", use_dictionary=False,
                          write_statistics=["step", "sample_id"]) as w:
        for k, xk in enumerate(x):
            values = pa.FixedSizeListArray.from_arrays(pa.array(xk.reshape(-1)), xk[0].size)
            w.write_table(pa.table({"step": np.full(len(xk), k, np.int32), "sample_id": np.arange(len(xk)),
                                    "x": pa.ExtensionArray.from_storage(kind, values)}, schema=schema))


def write_arrow_binary(path: Path, x: np.ndarray) -> None:
    """pyarrow's ParquetWriter on dode's state column alone: no ids, checksums, statistics or footer index."""
    schema = pa.schema([("x", pa.large_binary())])
    with pq.ParquetWriter(path, schema, compression="none", use_dictionary=False, write_statistics=False) as w:
        for xk in x:
            w.write_table(pa.table({"x": states_column(xk, len(xk))}, schema=schema), row_group_size=len(xk))


def read_arrow_binary(path: Path, k: int) -> np.ndarray:
    column = pq.ParquetFile(path, memory_map=True).read_row_group(k).column("x").chunk(0)
    return np.frombuffer(column.buffers()[2], np.float32).reshape(len(column), -1)


def read_arrow_tensor(path: Path, k: int) -> np.ndarray:
    return pq.ParquetFile(path, memory_map=True).read_row_group(k, columns=["x"]).column("x").chunk(0).to_numpy_ndarray()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--shape", type=int, nargs="+", default=[3, 32, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()

    x = np.random.default_rng(0).standard_normal((args.steps, args.samples, *args.shape), dtype=np.float32)
    step_mb, total_mb = x[0].nbytes / 1e6, x.nbytes / 1e6
    work = Path(tempfile.mkdtemp(dir=args.dir))
    path, npy = work / "t.parquet", work / "all.npy"

    def clear() -> None:
        path.unlink(missing_ok=True)
        npy.unlink(missing_ok=True)

    rows = []
    try:
        for k in range(args.steps):
            np.save(work / f"step{k}.npy", x[k])
        for name, write, read in [
            ("dode, compression none", lambda: write_dode(path, x, "none"), lambda k: read_step(path, k)),
            ("dode, zstd", lambda: write_dode(path, x, "zstd"), lambda k: read_step(path, k)),
            ("Arrow fixed_shape_tensor (reference)", lambda: write_arrow_tensor(path, x),
             lambda k: read_arrow_tensor(path, k)),
            ("pyarrow, state column only (reference)", lambda: write_arrow_binary(path, x),
             lambda k: read_arrow_binary(path, k)),
        ]:
            ours_w, npy_w = paired(write, lambda: np.save(npy, x), args.repeats, clear)
            write()
            assert np.array_equal(np.asarray(read(args.steps - 1)).reshape(x[-1].shape), x[-1])
            ours_r, npy_r = paired(lambda read=read: [read(k) for k in range(args.steps)],
                                   lambda: [np.load(work / f"step{k}.npy") for k in range(args.steps)], args.repeats)
            rows.append((name, total_mb / ours_w, npy_w / ours_w, ours_r / args.steps * 1e3,
                         npy_r / args.steps * 1e3, npy_r / ours_r, path.stat().st_size / 1e6))
    finally:
        shutil.rmtree(work)

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"data: {args.steps} steps x {args.samples} samples x {tuple(args.shape)} float32 = {total_mb:.1f} MB "
          f"({step_mb:.1f} MB per step); min of {args.repeats}\n")
    print("| layout | write MB/s | write / np.save | read one step (ms) | np.load one step (ms) | read / np.load | file MB |")
    print("|---|---|---|---|---|---|---|")
    for name, mbs, wratio, ms, npy_ms, rratio, size in rows:
        print(f"| {name} | {mbs:.0f} | {wratio:.2f}x | {ms:.2f} | {npy_ms:.2f} | {rratio:.2f}x | {size:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
