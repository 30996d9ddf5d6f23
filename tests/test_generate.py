"""Large-batch sampling: seeded noise, shard/batch invariance, resumption, lambdas from the registry (issue 4)."""

import contextlib
import io
from unittest import mock

import numpy as np
import pytest
import torch

from dode.cli import COMMANDS
from dode.cli import main as dode_main
from dode.common.devices import resolve_device
from dode.common.images import iter_folder, to_model, to_uint8
from dode.core.correction import Lambdas
from dode.core.grids import GridSpec
from dode.core.rng import seeded_noise
from dode.models import MODELS, Model, load_model
from dode.pipeline.generate import SamplingJob, export_png, generate_batch, run_sampling
from dode.store.lambdas import save_lambdas
from dode.store.registry import Registry
from dode.store.samples import load_samples

GRID = GridSpec("karras", 5)
N = 10
ROUNDING = 1e-9  # float64 samples computed in different batch shapes agree to this (observed: ~1e-15)


def assert_uint8_agree(images: np.ndarray, x: torch.Tensor) -> None:
    """uint8 ``images`` equal ``to_uint8(x)`` of float samples from another batch shape: exactly, except at
    pixels whose value lies within ROUNDING of a quantisation tie, which may round either way."""
    expected = to_uint8(x)
    scaled = (x.double() + 1).numpy() * 127.5
    near_tie = np.abs(scaled - np.floor(scaled) - 0.5) < ROUNDING * 127.5
    diff = np.abs(images.astype(int) - expected.astype(int))
    assert images.shape == expected.shape and diff.max(initial=0) <= 1 and not diff[~near_tie].any()


@pytest.fixture(scope="module")
def mixture() -> Model:
    return load_model("mixture-smooth")


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "registry")


@pytest.fixture
def counting(mixture, monkeypatch):
    """A registered model "counting-mixture": mixture-smooth that counts its denoiser calls."""
    calls = []

    def den(x, sigma):
        calls.append(len(x))
        return mixture.denoiser(x, sigma)

    monkeypatch.setitem(MODELS, "counting-mixture", lambda device: Model("counting-mixture", den, mixture.shape,
                                                                         mixture.fingerprint))
    return calls


def job(**kw) -> SamplingJob:
    return SamplingJob(**{"model": "mixture-smooth", "solver": "euler", "grid": GRID.to_dict(), "n_samples": N,
                          "batch_size": 4, **kw})


def test_seeded_noise_depends_on_the_seed_only():
    rows = seeded_noise([7, 3, 7], (1, 4, 4))
    assert rows.dtype == torch.float64 and rows.shape == (3, 1, 4, 4)
    assert torch.equal(rows[0], torch.randn((1, 4, 4), generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    assert torch.equal(rows[0], rows[2]) and not torch.equal(rows[0], rows[1])
    assert torch.equal(seeded_noise(range(5, 9), (2,))[1:3], seeded_noise([6, 7], (2,)))
    for bad in ([-1], [1.5], [2**63]):
        with pytest.raises(ValueError, match="seeds must be integers"):
            seeded_noise(bad, (2,))


def test_uint8_conversion_is_round_clip_of_the_affine_map():
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 1 / 255, 0.5, 1.0, 2.0], dtype=torch.float64)
    expected = np.clip(np.round((x.numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    assert to_uint8(x).tolist() == expected.tolist() == [0, 0, 0, 128, 128, 191, 255, 255]
    grid = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    assert np.array_equal(to_uint8(to_model(grid)), grid)  # to_model inverts to_uint8 on its grid


def test_samples_depend_on_their_batch_only_through_rounding(mixture):
    # Bit-identical only where the construction guarantees it: the same seeds in the same batch shape.
    sigmas = GRID.sigmas(mixture.denoiser)
    whole = generate_batch(mixture.denoiser, sigmas, "euler", None, range(N), mixture.shape)
    assert torch.equal(generate_batch(mixture.denoiser, sigmas, "euler", None, range(N), mixture.shape), whole)
    # Other batch shapes: BLAS and vectorised kernels round differently (per CPU), so floats agree to rounding.
    for size in (1, 3, 7):
        parts = [generate_batch(mixture.denoiser, sigmas, "euler", None, range(i, min(i + size, N)), mixture.shape)
                 for i in range(0, N, size)]
        torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=ROUNDING)
        assert_uint8_agree(to_uint8(torch.cat(parts)), whole)
    shuffled = generate_batch(mixture.denoiser, sigmas, "euler", None, [9, 2, 5], mixture.shape)
    torch.testing.assert_close(shuffled, whole[[9, 2, 5]], rtol=0, atol=ROUNDING)
    assert (whole[0] - whole[1]).abs().max() > 0.1  # the seeds matter far beyond the tolerance


def test_uint8_samples_are_bit_identical_across_shards_and_reruns(mixture, registry, tmp_path):
    reference = generate_batch(mixture.denoiser, GRID.sigmas(mixture.denoiser), "euler", None, range(N), mixture.shape)
    single = run_sampling(job(batch_size=4), registry)
    assert single.params["n"] == N
    assert_uint8_agree(load_samples(registry, single), reference)  # another batch shape: agree up to ties
    shard0 = run_sampling(job(batch_size=3), registry, shard=0, num_shards=3)
    assert shard0.params["shard"] == 0
    run_sampling(job(batch_size=3), registry, shard=2, num_shards=3)
    whole = run_sampling(job(batch_size=3), registry, shard=1, num_shards=3)  # the last shard to finish
    assert "shard" not in whole.params and whole.params["job"] == job(batch_size=3).to_dict()
    assert_uint8_agree(load_samples(registry, whole), reference)
    assert run_sampling(job(batch_size=3), registry).id == whole.id  # nothing new to compute or publish
    # By construction: one job's chunks (same seeds, same batch shape) give the same bits, sharded or not.
    unsharded = run_sampling(job(batch_size=3), Registry(tmp_path / "unsharded"))
    assert np.array_equal(load_samples(Registry(tmp_path / "unsharded"), unsharded), load_samples(registry, whole))
    assert np.array_equal(load_samples(registry, shard0), load_samples(registry, whole)[:3])


def test_an_interrupted_job_resumes_without_recomputing_finished_chunks(counting, registry):
    nfe = 5  # euler on a 5-step grid
    interrupted = job(model="counting-mixture", batch_size=3)  # chunks of 3, 3, 3, 1 samples

    def crash_after_chunk_1(c, art, now):
        if c == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sampling(interrupted, registry, on_chunk=crash_after_chunk_1)
    assert counting == [3] * nfe * 2
    counting.clear()
    art = run_sampling(interrupted, registry)
    assert counting == [3] * nfe + [1] * nfe  # chunks 2 and 3 only
    fresh = Registry(registry.uri + "-fresh")
    assert np.array_equal(load_samples(registry, art), load_samples(fresh, run_sampling(interrupted, fresh)))
    counting.clear()
    longer = run_sampling(job(model="counting-mixture", batch_size=3, n_samples=12), registry)
    assert counting == [3] * nfe and longer.params["n"] == 12  # seeds 0-8 reused; only chunk 9-11 is new


def test_lambdas_come_from_the_registry(mixture, registry):
    sigmas = GRID.sigmas(mixture.denoiser)
    lambdas = Lambdas(values=(0.0, 0.3, -0.2, 0.1, 0.05), solver="euler", sigmas=tuple(sigmas.tolist()))
    lam_art = save_lambdas(registry, lambdas, "test/euler/karras-5")
    art = run_sampling(job(lambdas_id=lam_art.id[:10]), registry)  # a unique prefix is enough
    assert art.params["job"]["lambdas_id"] == lam_art.id and lam_art.id in art.parents
    expected = generate_batch(mixture.denoiser, sigmas, "euler", lambdas, range(N), mixture.shape)
    assert_uint8_agree(load_samples(registry, art), expected)
    assert not np.array_equal(to_uint8(expected), load_samples(registry, run_sampling(job(), registry)))
    with pytest.raises(ValueError, match="fitted for solver 'euler'"):
        run_sampling(job(lambdas_id=lam_art.id, solver="heun", grid=GridSpec("karras", 3).to_dict()), registry)


def test_bad_jobs_are_one_clear_error(registry):
    with pytest.raises(ValueError, match="shard must be in"):
        run_sampling(job(), registry, shard=2, num_shards=2)
    with pytest.raises(ValueError, match="num_shards must be in"):
        job(batch_size=4).shard_chunks(0, 4)
    with pytest.raises(ValueError, match="unknown grid family"):
        job(grid={"family": "linear", "steps": 5})
    with pytest.raises(ValueError, match="batch_size"):
        job(batch_size=0)
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="cpu"):
        resolve_device("gpu")


def test_sample_cli_prints_the_id_and_exports_png(tmp_path, registry):
    argv = ["sample", "--model", "mixture-smooth", "--nfe", "5", "--sampling-n-samples", N, "--sampling-batch-size", 4,
            "--registry", registry.uri, "--png-dir", tmp_path / "png", "--device", "cpu"]
    out, err = io.StringIO(), io.StringIO()
    only_scoring = {name: mod for name, mod in COMMANDS.items() if mod == "dode.cli.scoring"}
    with mock.patch.dict(COMMANDS, only_scoring, clear=True), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        assert dode_main([str(a) for a in argv]) == 0
    art = registry.get(out.getvalue().strip())
    images = load_samples(registry, art)
    assert art.kind == "samples" and images.shape == (N, 1, 8, 8) and images.dtype == np.uint8
    assert np.array_equal(np.concatenate(list(iter_folder(tmp_path / "png", 4))), images)  # lossless PNGs
    assert sorted(p.name for p in (tmp_path / "png").iterdir())[:2] == ["000000.png", "000001.png"]
    assert export_png(registry, art, tmp_path / "again") == N
