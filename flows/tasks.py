"""The Prefect tasks: each wraps one step of ``flows.steps`` with its retry and cache policy.

Tasks exchange registry ids and small JSON configs, never tensors; their cache keys are content hashes of
those (``flows.common.cache_key``), and the steps look their artifact up in the registry before computing.
"""

from __future__ import annotations

import time

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from . import steps
from .common import CACHED, provenance

RETRY_IO = {"retries": 2, "retry_delay_seconds": 1}  # registry reads and writes (local disk or object store)
PROGRESS_EVERY_S = 2.0  # sampling progress artifacts: for shards that run longer, updated at most this often


@task(name="register-model", cache_policy=NO_CACHE, **RETRY_IO)
def register_model(registry: str, name: str) -> str:
    """The model artifact, the root of every lineage; never cached, so a retrained model is always noticed."""
    return steps.register_model(registry, name, provenance=provenance())


@task(name="teacher", **CACHED)
def teacher(registry: str, model_id: str, grid: dict, teacher_factor: int, teacher_solver: str, n_samples: int,
            first_seed: int, batch_size: int) -> str:
    """The teacher trajectory of a student grid (stored states on that grid only)."""
    return steps.teacher(registry, model_id, grid, teacher_factor, teacher_solver, n_samples, first_seed, batch_size,
                         provenance=provenance())


@task(name="distill", **CACHED)
def distill(registry: str, trajectory_id: str, solver: str, guard: bool, holdout: float, correction: str) -> str:
    """D-ODE lambdas for ``solver``, fitted to a stored teacher trajectory."""
    return steps.distill(registry, trajectory_id, solver, guard, holdout, correction, provenance=provenance())


@task(name="sample", **CACHED, retries=1, retry_delay_seconds=1)
def sample(registry: str, job: dict, shard: int = 0, num_shards: int = 1) -> str:
    """One shard of a sampling job (resumable chunk by chunk), with a progress artifact once it has run for
    PROGRESS_EVERY_S seconds, updated at most that often."""
    progress, last = [], [time.monotonic()]

    def advance(done: int, total: int) -> None:
        if time.monotonic() - last[0] < PROGRESS_EVERY_S and not (progress and done == total):
            return
        if not progress:
            progress.append(create_progress_artifact(0.0, description=f"sampling shard {shard}/{num_shards} of {job}"))
        update_progress_artifact(progress[0], 100.0 * done / total)
        last[0] = time.monotonic()

    return steps.sample(registry, job, shard, num_shards, on_chunk=advance)


@task(name="gather-samples", **CACHED, **RETRY_IO)
def gather_samples(registry: str, job: dict) -> str:
    """The whole job's samples artifact, once every shard has run."""
    return steps.gather_samples(registry, job)


@task(name="reference-stats", **CACHED, **RETRY_IO)
def reference_stats(registry: str, model_id: str, metric: str, n_samples: int, first_seed: int) -> str:
    """Feature statistics of the model's data."""
    return steps.reference_stats(registry, model_id, metric, n_samples, first_seed, provenance=provenance())


@task(name="score", **CACHED, **RETRY_IO)
def score(registry: str, samples_id: str, metric: str, reference_id: str) -> str:
    """One metric of one samples artifact."""
    return steps.score(registry, samples_id, metric, reference_id, provenance=provenance())
