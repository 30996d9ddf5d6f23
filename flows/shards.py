"""Sampling and scoring shards: run in the flow's process, or on a Dask cluster through prefect-dask.

The shards are the same either way (a job's chunks split into ``num_shards`` contiguous blocks, each
sample drawn from its own seed), so a Dask run gives bit-identical artifacts, and the same ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from prefect import Task

from dode.generate import SamplingJob

from . import tasks

Calls = list[tuple[Task, dict[str, Any]]]
Runner = Callable[[Calls], list[Any]]


@contextmanager
def shard_runner(dask: bool = False, dask_address: str | None = None) -> Iterator[Runner]:
    """A function that runs task calls and returns their results, in order.

    Sequential in this process unless ``dask`` (a temporary local cluster, one single-threaded worker
    process per core) or ``dask_address`` (an existing cluster's scheduler, e.g. ``tcp://host:8786``).
    """
    if not dask and not dask_address:
        yield lambda calls: [t(**params) for t, params in calls]
        return
    from prefect_dask import DaskTaskRunner

    if dask_address:
        runner = DaskTaskRunner(address=dask_address)
    else:
        workers = max(1, min(4, os.cpu_count() or 1))
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                                "dashboard_address": None})
    # Cluster start/stop chatter: warnings only, here and in the worker processes (which read DASK_* at start).
    # A worker whose interpreter takes over 4 s to exit on a busy machine is killed by its nanny, after the
    # results are in: not worth a warning.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    for name, level in {"distributed": logging.WARNING, "distributed.nanny": logging.ERROR,
                        "prefect.task_runner.dask": logging.WARNING}.items():
        logging.getLogger(name).setLevel(level)
    with ExitStack() as stack:
        stack.enter_context(api_url_for_workers())
        stack.enter_context(worker_environment())
        stack.enter_context(runner)

        def run(calls: Calls) -> list[Any]:
            futures = [runner.submit(t, params) for t, params in calls]
            return [f.result() for f in futures]

        yield run


def worker_environment() -> Any:
    """Dask's default worker environment without MALLOC_TRIM_THRESHOLD_: set at all, it turns off glibc's
    dynamic mmap threshold, so every large tensor is mmapped and page-faulted anew, which doubled the
    sampling time of the embedded model here (sys time 4.7 s vs 0.5 s for 10,000 sample evaluations)."""
    import dask

    env = dask.config.get("distributed.nanny.pre-spawn-environ", {})
    return dask.config.set({"distributed.nanny.pre-spawn-environ": {
        k: v for k, v in env.items() if k != "MALLOC_TRIM_THRESHOLD_"}})


@contextmanager
def api_url_for_workers() -> Iterator[None]:
    """Point Dask workers at this process's Prefect API: a local ephemeral server has no URL in the settings
    (each worker would start its own), so name it while the workers run."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the running ephemeral server of this process
    server.start()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


def sample_jobs(run: Runner, registry: str, jobs: list[dict], num_shards: int) -> list[str]:
    """Sample every job in ``num_shards`` shards (at most one per chunk); the jobs' samples artifact ids."""
    shards = [min(num_shards, SamplingJob.from_dict(job).num_chunks) for job in jobs]
    calls = [(tasks.sample, {"registry": registry, "job": job, "shard": s, "num_shards": n})
             for job, n in zip(jobs, shards) for s in range(n)]
    done = iter(run(calls))
    ids = []
    for job, n in zip(jobs, shards):
        shard_ids = [next(done) for _ in range(n)]
        ids.append(shard_ids[0] if n == 1 else tasks.gather_samples(registry, job))
    return ids


def score_all(run: Runner, registry: str, items: list[tuple[str, str, str]]) -> list[str]:
    """Score (samples id, metric, reference id) triples; the score artifact ids, in order."""
    return run([(tasks.score, {"registry": registry, "samples_id": s, "metric": m, "reference_id": r})
                for s, m, r in items])
