"""Explicit grids stay explicit (issue 18, item 5): lambdas imply the grid they were fitted on, learned or not; a
different grid passed with them, the start grid of a learned one included, is refused on every path."""

import numpy as np
import pytest
import torch

import dode
from dode.cli import main
from dode.common.images import to_uint8
from dode.core.correction import Lambdas
from dode.core.grids import GridSpec
from dode.models import load_model
from dode.pipeline.generate import SamplingJob, generate_batch, run_sampling
from dode.store.lambdas import save_lambdas
from dode.store.registry import Registry
from dode.store.samples import load_samples

START = GridSpec("karras", 4)


@pytest.fixture(scope="module")
def mixture():
    return load_model("mixture-smooth")


@pytest.fixture(scope="module")
def grids(mixture):
    """(the start grid, a learned grid moved from it: interior sigmas scaled by 0.7)."""
    start = START.sigmas(mixture.denoiser)
    learned = start.clone()
    learned[1:-1] *= 0.7
    return start, learned


def learned_lambdas(grids, values=(0.0, 0.2, -0.1, 0.05)):
    start, learned = grids
    return Lambdas(values, "euler", learned.tolist(), objective="final", fit={"start_sigmas": start.tolist()})


def noise(n=6):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64)


def test_lambdas_without_a_grid_sample_on_the_grid_they_were_fitted_on(mixture, grids):
    # lambda = 0 is the base solver bit for bit (eq. 9), so the implied grid is seen in the samples themselves.
    zero = learned_lambdas(grids, (0.0,) * 4)
    on_learned = dode.sample(mixture.denoiser, noise(), grids[1], "euler")
    assert torch.equal(dode.sample(mixture.denoiser, noise(), lambdas=zero), on_learned)
    assert not torch.allclose(on_learned, dode.sample(mixture.denoiser, noise(), grids[0], "euler"))
    lam = learned_lambdas(grids)
    implied = dode.sample(mixture.denoiser, noise(), lambdas=lam)
    assert torch.equal(dode.sample(mixture.denoiser, noise(), torch.tensor(lam.sigmas, dtype=torch.float64), "euler", lam), implied)
    assert not torch.equal(implied, on_learned)  # the weights are applied
    with pytest.raises(ValueError, match="pass sigmas"):
        dode.sample(mixture.denoiser, noise())


def test_a_different_grid_passed_with_lambdas_is_refused(mixture, grids):
    lam = learned_lambdas(grids)
    with pytest.raises(ValueError, match="start grid their learned 4-step grid was fitted from.*drop the grid"):
        dode.sample(mixture.denoiser, noise(), grids[0], "euler", lam)
    other = dode.karras_sigmas(4, 0.01, 20.0)
    with pytest.raises(ValueError, match="a different 4-step grid.*drop the grid"):
        dode.sample(mixture.denoiser, noise(), other, "euler", Lambdas((0.1,) * 4, "euler", grids[0].tolist()))


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "registry")


def job(**kw):
    return SamplingJob(**{"model": "mixture-smooth", "solver": "euler", "grid": None, "n_samples": 6, "batch_size": 3,
                          **kw})


def test_a_job_with_lambdas_samples_on_their_grid_and_refuses_another(mixture, grids, registry):
    lam = learned_lambdas(grids)
    art = save_lambdas(registry, lam, "final/euler/karras-4", params={"grid": START.to_dict()})  # the start grid
    samples = run_sampling(job(lambdas_id=art.id), registry)
    expected = generate_batch(mixture.denoiser, grids[1], "euler", lam, range(6), mixture.shape)
    assert np.array_equal(load_samples(registry, samples), to_uint8(expected))
    assert samples.params["job"]["grid"] is None and "fitted-grid" in samples.key
    again = job(lambdas_id=art.id, grid=GridSpec.explicit(lam.sigmas).to_dict())  # their own grid, given
    assert again.sampler_hash() != job(lambdas_id=art.id).sampler_hash()  # another job, the same samples
    assert np.array_equal(load_samples(registry, run_sampling(again, registry)), load_samples(registry, samples))
    before = {a.id for a in registry.list()}
    old = SamplingJob.from_dict({**job(lambdas_id=art.id).to_dict(), "grid": START.to_dict()})  # as flows wrote
    with pytest.raises(ValueError, match="start grid.*drop the grid"):
        run_sampling(old, registry)
    assert {a.id for a in registry.list()} == before  # refused before anything was published
    with pytest.raises(ValueError, match="a job without lambdas needs a grid"):
        job()


def test_cli_sample_with_learned_lambdas_uses_their_grid(mixture, grids, registry, capsys):
    lam = learned_lambdas(grids)
    art = save_lambdas(registry, lam, "final/euler/karras-4", params={"grid": START.to_dict()})
    argv = ["sample", "--model", "mixture-smooth", "--sampling-n-samples", "3", "--sampling-batch-size", "3", "--device", "cpu",
            "--registry", registry.uri, "--quiet", "--lambdas", art.id[:12]]
    assert main(argv) == 0
    samples = registry.get(capsys.readouterr().out.split()[-1])
    expected = generate_batch(mixture.denoiser, grids[1], "euler", lam, range(3), mixture.shape)
    assert np.array_equal(load_samples(registry, samples), to_uint8(expected))
    assert main([*argv, "--sigmas", ",".join(map(str, grids[0].tolist()))]) == 2
    assert "drop sigmas and gaussian when sampling with lambdas" in capsys.readouterr().err


def test_scheduler_takes_the_lambdas_grid_and_refuses_another():
    diffusers = pytest.importorskip("diffusers")
    from dode.integrations.diffusers.scheduler import DODEScheduler

    config = diffusers.DDPMScheduler().config
    lam = Lambdas((0.1, 0.2, 0.0), "euler", dode.karras_sigmas(3, 0.05, 14.0).tolist())
    implied = DODEScheduler.from_scheduler(config, lambdas=lam)
    own = DODEScheduler.from_scheduler(config, lambdas=lam, grid=GridSpec.explicit(lam.sigmas))
    implied.set_timesteps()
    own.set_timesteps()
    assert torch.equal(implied.sigmas, own.sigmas) and implied.sigmas.tolist() == list(lam.sigmas)
    for grid in (GridSpec.explicit(dode.karras_sigmas(3, 0.05, 10.0).tolist()), "karras"):
        with pytest.raises(ValueError, match="drop grid="):
            DODEScheduler.from_scheduler(config, lambdas=lam, grid=grid)
