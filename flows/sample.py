"""Sample flow: a sampling job (base or with D-ODE lambdas) in shards, in-process or on Dask."""

from __future__ import annotations

from prefect import flow

import dode
from dode.generate import SamplingJob
from dode.grids import GridSpec

from . import tasks
from .checks import validate
from .common import link_artifacts
from .shards import sample_jobs, shard_runner
from .steps import open_registry, registry_uri


@flow(name="dode-sample", version=dode.__version__)
def sample_flow(
    model: str = "mixture-smooth",
    solver: str | None = None,
    nfe: int | None = None,
    family: str = "karras",
    lambdas: str | None = None,
    n_samples: int = 1000,
    first_seed: int = 0,
    batch_size: int = 250,
    num_shards: int = 1,
    registry: str | None = None,
    dask: bool = False,
    dask_address: str | None = None,
) -> str:
    """Samples for seeds first_seed.. of ``solver`` at ``nfe`` (or of the solver and grid the ``lambdas``
    artifact was fitted on, with those lambdas); returns the samples artifact id."""
    validate("sample", locals())
    uri = registry_uri(registry)
    reg = open_registry(uri)
    if lambdas is not None:
        lam = reg.get(lambdas)
        if lam.kind != "lambdas":
            raise ValueError(f"artifact {lam.short} is a {lam.kind!r} artifact, not 'lambdas'")
        solver, grid, lambdas = lam.params["solver"], lam.params["grid"], lam.id
    else:
        grid = GridSpec.for_nfe(family, solver, nfe).to_dict()
    model_id = tasks.register_model(uri, model)
    job = SamplingJob(model, solver, grid, lambdas, n_samples, first_seed, batch_size).to_dict()
    with shard_runner(dask, dask_address) as run:
        (samples,) = sample_jobs(run, uri, [job], num_shards)
    link_artifacts(reg, [model_id, *([lambdas] if lambdas else []), samples])
    return samples
