"""The Parquet trajectory store: bit-exact round trips, filters, streaming teachers, and loud failures."""

import json
import os
import subprocess
import sys
import textwrap
import threading
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import dode
from dode.core.rng import seeded_noise
from dode.distillation.teacher import TeacherConfig, teacher_states
from dode.distillation.teacher_parquet import write_teacher
from dode.models import GaussianDenoiser
from dode.store import trajectory
from dode.store.trajectory import IdRuns, TrajectoryFile, TrajectoryWriter, read_meta, read_step, read_steps

SHAPE = (2, 3, 4)


def states(steps: int, n: int, seed: int = 0) -> np.ndarray:
    """Random float32 states with awkward values (subnormals, -0, extremes) to prove bit-exactness."""
    x = np.random.default_rng(seed).standard_normal((steps, n, *SHAPE)).astype(np.float32)
    x.reshape(-1)[:4] = [np.float32(1e-45), np.float32(-0.0), np.finfo(np.float32).max, np.float32(3e-39)]
    return x


def write(path, x, sigmas, **kw):
    with TrajectoryWriter(path, SHAPE, {"sigmas": sigmas, "solver": "euler", "model": "fp"}, **kw) as w:
        for i, xi in enumerate(x):
            w.write_step(i, xi, sample_ids=np.arange(100, 100 + len(xi)))
    return path


@pytest.fixture
def stored(tmp_path):
    x = states(5, 7)
    return write(tmp_path / "t.parquet", x, [4.0, 3.0, 2.0, 1.0, 0.0]), x


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_round_trip_is_bit_exact(tmp_path, compression):
    x = states(5, 7)
    path = write(tmp_path / "t.parquet", x, [4.0, 3.0, 2.0, 1.0, 0.0], compression=compression)
    traj = read_steps(path)
    assert traj.steps == (0, 1, 2, 3, 4)
    assert traj.x.dtype == torch.float32 and traj.x.shape == (5, 7, *SHAPE)
    assert np.array_equal(traj.x.numpy().view(np.uint32), x.view(np.uint32))  # bit for bit, -0 and subnormals too
    assert traj.sigmas.tolist() == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert traj.sample_ids.tolist() == list(range(100, 107))
    assert traj.meta["solver"] == "euler" and traj.meta["schema_version"] == trajectory.SCHEMA_VERSION
    assert traj.meta["compression"] == compression and traj.meta["dtype"] == "float32"
    assert read_meta(path)["steps"] == [0, 1, 2, 3, 4]
    assert pq.ParquetFile(path).num_row_groups == 5  # one row group per stored step


def test_step_and_sample_filters(stored):
    path, x = stored
    assert torch.equal(read_step(path, 3), torch.from_numpy(x[3]))
    traj = read_steps(path, steps=[4, 1], samples=[105, 100, 102])
    assert traj.steps == (4, 1) and traj.sample_ids.tolist() == [105, 100, 102]
    assert torch.equal(traj.x, torch.from_numpy(x[[4, 1]][:, [5, 0, 2]]))
    assert torch.equal(traj.at(1), torch.from_numpy(x[1, [5, 0, 2]]))
    with pytest.raises(ValueError, match=r"step 9 is not stored .* stored steps: \[0, 1, 2, 3, 4\]"):
        read_step(path, 9)
    with pytest.raises(ValueError, match=r"samples \[7\] are not stored at step 2; .* 100\.\.106"):
        read_steps(path, steps=[2], samples=[100, 7])


def test_a_step_written_in_batches_reads_as_one(tmp_path):
    x = states(2, 6)
    with TrajectoryWriter(tmp_path / "b.parquet", SHAPE, {"sigmas": [1.0, 0.0]}) as w:
        for step in (0, 1):
            w.write_step(step, x[step, :4], sample_ids=range(4))
        for step in (0, 1):
            w.write_step(step, x[step, 4:], sample_ids=range(4, 6))
        with pytest.raises(ValueError, match="sample ids repeat"):
            w.write_step(1, x[1, :1], sample_ids=[2])
    assert torch.equal(read_steps(tmp_path / "b.parquet").x, torch.from_numpy(x))
    assert torch.equal(read_steps(tmp_path / "b.parquet", samples=[5, 0]).at(1), torch.from_numpy(x[1, [5, 0]]))


def test_id_runs_match_a_python_set_and_stay_compact():
    # Random batches against a set: add() refuses exactly the batches that meet the set, and the runs
    # cover exactly its members; a contiguous range written in batches (and ids near int64's max) is one run.
    rng = np.random.default_rng(0)
    for _ in range(300):
        runs, want = IdRuns(), set()
        for _ in range(6):
            lo = int(rng.integers(-20, 40))
            ids = np.unique(rng.integers(lo, lo + 30, int(rng.integers(1, 20))))
            fresh = not want & set(ids.tolist())
            assert runs.add(ids) == fresh
            want |= set(ids.tolist()) if fresh else set()
            assert {i for a, b in zip(runs.first, runs.last) for i in range(a, b + 1)} == want
            assert np.all(runs.first[1:] - 1 > runs.last[:-1])
    runs = IdRuns()
    for start in (512, 0, 1024, 1536):
        assert runs.add(np.arange(start, start + 512, dtype=np.int64))
    assert runs.first.tolist() == [0] and runs.last.tolist() == [2047]
    top = np.array([2**63 - 3, 2**63 - 2, 2**63 - 1], np.int64)
    assert runs.add(top) and not runs.add(top[1:]) and runs.first.tolist() == [0, 2**63 - 3]


def test_write_teacher_from_a_noise_function_of_the_seeds(tmp_path, gaussian):
    # Seeded noise made batch by batch gives the same file contents as the whole noise tensor.
    seeds, shape, sigmas = list(range(40, 47)), (1, 4, 4), dode.karras_sigmas(4)
    whole = write_teacher(tmp_path / "a.parquet", gaussian, seeded_noise(seeds, shape), sigmas, "heun",
                          sample_ids=seeds)
    streamed = write_teacher(tmp_path / "b.parquet", gaussian, partial(seeded_noise, shape=shape), sigmas, "heun",
                             sample_ids=seeds, batch_size=3)
    a, b = read_steps(whole), read_steps(streamed)
    assert torch.equal(a.x, b.x) and a.sample_ids.tolist() == b.sample_ids.tolist() == seeds
    with pytest.raises(ValueError, match="pass them as sample_ids"):
        write_teacher(tmp_path / "c.parquet", gaussian, partial(seeded_noise, shape=shape), sigmas)
    with pytest.raises(ValueError, match=r"noise for sample ids 13\.\.15 has shape \(2, 1, 4, 4\); expected \(3,"):
        write_teacher(tmp_path / "d.parquet", gaussian, lambda ids: seeded_noise(ids[:2] if ids[0] > 10 else ids, shape),
                      sigmas, sample_ids=range(10, 17), batch_size=3)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]  # no partial file left


def test_a_writer_that_cannot_open_its_file_leaves_no_thread_behind(tmp_path):
    (tmp_path / f".t.parquet.{os.getpid()}.partial").mkdir()  # the writer's temporary file cannot be created
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(OSError):
        TrajectoryWriter(tmp_path / "t.parquet", SHAPE)
    assert not [t.name for t in threading.enumerate() if t.ident not in before]


def test_writer_rejects_bad_input_and_a_failed_run_leaves_no_file(tmp_path):
    path = tmp_path / "t.parquet"
    with pytest.raises(ValueError, match=r"choose one of \['none', 'zstd'\]"):
        TrajectoryWriter(path, SHAPE, compression="gzip")
    with pytest.raises(ValueError, match="set by the writer"):
        TrajectoryWriter(path, SHAPE, {"schema_version": 3})
    with pytest.raises(RuntimeError, match="teacher died"), TrajectoryWriter(path, SHAPE, {"sigmas": [1.0, 0.0]}) as w:
        w.write_step(0, states(1, 3)[0])
        with pytest.raises(ValueError, match=r"expected \(samples, 2, 3, 4\)"):
            w.write_step(1, np.zeros((3, 4, 3, 2), np.float32))
        raise RuntimeError("teacher died")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its partial remains


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def last_value_byte(path, row_group, column):
    """A byte of the last value of a column chunk (plain pages end with their values)."""
    meta = pq.ParquetFile(path).metadata.row_group(row_group).column(column)
    return meta.data_page_offset + meta.total_compressed_size - 3


@pytest.mark.parametrize("column, message", [(3, "step 2 .x. fails its checksum"),
                                             (2, "step 2 .sample_id. fails its checksum"),
                                             (0, "does not match its footer")])
def test_a_corrupted_byte_is_an_error_not_garbage(stored, column, message):
    path, _ = stored
    flip_byte(path, last_value_byte(path, 2, column))
    assert torch.equal(read_step(path, 1), read_step(path, 1))  # other steps stay readable
    with pytest.raises(ValueError, match=f"not a readable dode trajectory: .*{message}"):
        read_step(path, 2)
    with pytest.raises(ValueError, match="not a readable dode trajectory"):
        TrajectoryFile(path).verify()


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0])
def test_a_truncated_file_is_an_error(stored, keep):
    path, _ = stored
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="not a readable dode trajectory: truncated or corrupted"):
        read_steps(path)


def test_edited_metadata_and_foreign_files_are_errors(stored, tmp_path):
    path, _ = stored
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[trajectory.META_KEY])
    kv = pq.ParquetFile(path).metadata.metadata
    forged = table.replace_schema_metadata({trajectory.META_KEY: json.dumps({**meta, "solver": "heun"})})
    with pq.ParquetWriter(tmp_path / "forged.parquet", forged.schema) as w:
        w.write_table(forged)
        w.add_key_value_metadata({trajectory.INDEX_KEY: kv[trajectory.INDEX_KEY]})
    with pytest.raises(ValueError, match="metadata does not match the checksum"):
        read_meta(tmp_path / "forged.parquet")
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="no dode trajectory metadata"):
        read_steps(tmp_path / "other.parquet")
    with pytest.raises(FileNotFoundError):
        read_steps(tmp_path / "missing.parquet")


def test_schema_version_mismatch_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(trajectory, "SCHEMA_VERSION", 2)
    path = write(tmp_path / "v2.parquet", states(2, 3), [1.0, 0.0])
    monkeypatch.undo()
    with pytest.raises(ValueError, match="trajectory schema version 2, this dode .* reads version 1; re-create"):
        read_steps(path)


@pytest.fixture(scope="module")
def gaussian():
    return GaussianDenoiser(torch.linspace(-1, 1, 16).reshape(1, 4, 4), 0.5)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m"])
def test_write_teacher_streams_the_states_the_teacher_reaches(tmp_path, gaussian, solver):
    # The stored states are exactly dode's teacher states in float32 (Heun's last call per index wins),
    # the last one is dode.sample's output, and D(x; sigma) is stored at every evaluated state.
    noise = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = dode.karras_sigmas(6)
    path = write_teacher(tmp_path / "t.parquet", gaussian, noise, sigmas, solver, denoised=True,
                         sample_ids=range(10, 15), meta={"model": "gauss", "teacher_factor": 1})
    plan = TeacherConfig(solver=solver, factor=1).plan(sigmas, solver, gaussian)
    want = teacher_states(gaussian, noise, plan, keep=set(range(7)))
    traj = read_steps(path, denoised=False)
    assert traj.steps == tuple(range(7)) and traj.sample_ids.tolist() == list(range(10, 15))
    for i in range(7):
        assert torch.equal(traj.at(i), want[i].float()), i
    assert torch.equal(traj.at(6), dode.sample(gaussian, noise, sigmas, solver).float())
    with TrajectoryFile(path) as f:
        for i in range(6):
            den = gaussian(want[i], sigmas[i].expand(5)).float()
            assert torch.equal(f.read(i, denoised=True)[1], den), i
        with pytest.raises(ValueError, match="no denoiser output stored for step 6"):
            f.read(6, denoised=True)
    meta = read_meta(path)
    assert meta["sigmas"] == sigmas.tolist() and meta["solver"] == solver and meta["model"] == "gauss"


def test_write_teacher_keeps_only_chosen_indices_and_batches(tmp_path, gaussian):
    noise = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fine = dode.refine(dode.karras_sigmas(3), 4)
    keep = {0, 4, 8, 12}
    whole = write_teacher(tmp_path / "a.parquet", gaussian, noise, fine, "heun", keep=keep)
    batched = write_teacher(tmp_path / "b.parquet", gaussian, noise, fine, "heun", keep=keep, batch_size=4)
    assert read_meta(whole)["steps"] == [0, 4, 8, 12]
    assert pq.ParquetFile(whole).num_row_groups == 4 and pq.ParquetFile(batched).num_row_groups == 8
    assert torch.equal(read_steps(whole).x, read_steps(batched).x)
    want = teacher_states(gaussian, noise, TeacherConfig(solver="heun", factor=4).plan(dode.karras_sigmas(3), "heun",
                                                                                     gaussian))
    assert torch.equal(read_step(whole, 8), want[8].float())
    with pytest.raises(ValueError, match=r"keep must be grid indices in 0\.\.12"):
        write_teacher(tmp_path / "c.parquet", gaussian, noise, fine, keep={13})


def test_writing_a_large_trajectory_holds_about_one_step(tmp_path):
    # 64 steps x 4096 samples x 1024 float32 = 1 GiB streamed through the writer; the peak resident
    # memory grows by a few steps' worth (16 MiB each), never by the trajectory.
    code = textwrap.dedent(f"""
        import resource, sys, numpy as np
        from dode.store.trajectory import TrajectoryWriter, read_step
        steps, n, shape = 64, 4096, (4, 16, 16)
        x = np.random.default_rng(0).standard_normal((n, *shape), dtype=np.float32)
        with TrajectoryWriter({str(tmp_path / "big.parquet")!r}, shape, {{"solver": "euler"}}) as w:
            w.write_step(0, x, sigma=64.0)
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            for k in range(1, steps):
                x += 1.0
                w.write_step(k, x, sigma=64.0 - k)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert np.array_equal(read_step({str(tmp_path / "big.parquet")!r}, 63).numpy(), x)
        print((peak - base) * 1024, steps * x.nbytes)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    growth, total = map(int, done.stdout.split())
    assert total == 1 << 30
    assert growth < 4 * (total // 64), f"peak RSS grew {growth / 2**20:.0f} MiB writing a {total / 2**20:.0f} MiB trajectory"
