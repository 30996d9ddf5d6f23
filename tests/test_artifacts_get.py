"""``dode artifacts get`` on an artifact with parts (a samples job or shard): PNGs by default, one .npz or the
parts' files on request, every chunk read verified, all-or-nothing."""

import os
import stat

import numpy as np
import pytest
from PIL import Image

from dode.cli import main
from dode.core.grids import GridSpec
from dode.pipeline.generate import SamplingJob, run_sampling
from dode.store.registry import Registry
from dode.store.samples import load_samples

N = 10


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """A job of 10 samples in 3 chunks (4, 4, 2) on the analytic mixture model, and a shard of another job."""
    root = tmp_path_factory.mktemp("get") / "registry"
    reg = Registry(root)
    job = SamplingJob("mixture-smooth", "euler", GridSpec("karras", 3).to_dict(), None, N, 5, 4)
    shard = run_sampling(SamplingJob(**{**job.to_dict(), "n_samples": 12}), reg, shard=1, num_shards=3)
    return root, reg, run_sampling(job, reg), shard


def get(root, *argv):
    return main(["artifacts", "get", *map(str, argv), "--registry", str(root), "--quiet"])


def test_png_folder_by_default(sampled, tmp_path, capsys):
    root, reg, job, _ = sampled
    assert get(root, job.id[:12], "--out", tmp_path) == 0
    assert f"{job.id}: {N} PNG(s) verified into {tmp_path}" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == [f"{s:06d}.png" for s in range(5, 5 + N)]  # nothing hidden left
    images = load_samples(reg, job)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "000009.png")), images[4, 0])
    assert get(root, job.id, "--out", tmp_path) == 0  # same content again: kept


def test_npz_holds_images_and_seeds(sampled, tmp_path, capsys):
    root, reg, job, shard = sampled
    assert get(root, job.id, "--out", tmp_path, "--format", "npz") == 0
    with np.load(tmp_path / "samples.npz") as npz:
        assert np.array_equal(npz["images"], load_samples(reg, job)) and npz["images"].dtype == np.uint8
        assert npz["seeds"].tolist() == list(range(5, 5 + N))
    assert get(root, shard.id, "--out", tmp_path / "shard", "--format", "npz") == 0  # a shard: its chunk only
    with np.load(tmp_path / "shard" / "samples.npz") as npz:
        assert npz["seeds"].tolist() == [9, 10, 11, 12]


def test_files_format_writes_the_index_and_every_part(sampled, tmp_path, capsys):
    root, _, job, _ = sampled
    assert get(root, job.id, "--out", tmp_path, "--format", "files") == 0
    chunks = sorted(os.listdir(tmp_path / "parts"))
    assert (tmp_path / "index.json").is_file() and len(chunks) == 3
    assert all((tmp_path / "parts" / c / "images.npy").is_file() for c in chunks)
    assert "3 part(s) (and index.json)" in capsys.readouterr().out


def test_a_tampered_chunk_writes_nothing(sampled, tmp_path, capsys):
    root, reg, job, _ = sampled
    chunk = next(p for p in job.parents if reg.get(p).kind == "samples")
    path = root / "artifacts" / chunk / "files" / "images.npy"
    original = path.read_bytes()
    path.chmod(stat.S_IWUSR | stat.S_IRUSR)
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    try:
        assert get(root, job.id, "--out", tmp_path) == 2
    finally:
        path.write_bytes(original)
    assert "fails its sha256 check" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_other_content_is_refused_unless_forced(sampled, tmp_path, capsys):
    root, _, job, _ = sampled
    (tmp_path / "000005.png").write_bytes(b"not this")
    assert get(root, job.id, "--out", tmp_path) == 2
    assert "000005.png exists with other content" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["000005.png"]
    assert get(root, job.id, "--out", tmp_path, "--force") == 0 and len(os.listdir(tmp_path)) == N


def test_format_needs_an_artifact_with_parts(sampled, tmp_path, capsys):
    root, reg, job, _ = sampled
    chunk = next(p for p in job.parents if reg.get(p).kind == "samples")
    assert get(root, chunk, "--out", tmp_path, "--format", "png") == 2
    assert "--format png applies to artifacts with parts" in capsys.readouterr().err
    assert get(root, chunk, "--out", tmp_path) == 0 and os.listdir(tmp_path) == ["images.npy"]
