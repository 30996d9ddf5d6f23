"""Where a flow's tasks run: in the flow's process (one at a time, the default), or on a Dask cluster
through prefect-dask; and the executor that runs the library's steps as tasks on the flow's task runner.

The shards are the same either way (a job's chunks split into ``num_shards`` contiguous blocks, each
sample drawn from its own seed), so a Dask run gives bit-identical artifacts, and the same ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

from prefect import Flow
from prefect.artifacts import update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from . import tasks

R = TypeVar("R")
IN_PROCESS = ThreadPoolTaskRunner(max_workers=1)  # every flow's default: one task at a time, as a plain loop


def run_on(body: Flow[..., R], dask: bool, dask_address: str | None, *args: Any) -> R:
    """``body(*args)``: in the calling flow (its task runner: one task at a time), or, with ``dask`` (a
    temporary local cluster, one single-threaded worker process per core) or ``dask_address`` (an existing
    cluster's scheduler, e.g. ``tcp://host:8786``), as a subflow whose task runner is a DaskTaskRunner."""
    if not dask and not dask_address:
        return body.fn(*args)
    from prefect_dask import DaskTaskRunner

    if dask_address:
        runner = DaskTaskRunner(address=dask_address)
    else:
        workers = max(1, min(4, os.cpu_count() or 1))
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                                "dashboard_address": None})
    quiet_dask()
    with ExitStack() as stack:
        stack.enter_context(api_url_for_workers())
        stack.enter_context(worker_environment())
        return body.with_options(task_runner=runner)(*args)


def quiet_dask() -> None:
    """Cluster start/stop chatter: warnings only, here and in the worker processes (which read DASK_* at start).
    A worker whose interpreter takes over 4 s to exit on a busy machine is killed by its nanny, after the
    results are in: not worth a warning."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    for name, level in {"distributed": logging.WARNING, "distributed.nanny": logging.ERROR,
                        "prefect.task_runner.dask": logging.WARNING}.items():
        logging.getLogger(name).setLevel(level)


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


class TaskExecutor:
    """Runs library steps as their Prefect tasks (``dode_flows.tasks``) on the flow's task runner: ``map`` submits
    every call at once (a Dask runner runs them in parallel), ``progress`` updates a progress artifact."""

    def __init__(self, progress: Any = None) -> None:
        self.tasks = {t.fn: t for t in tasks.STEPS}
        self.progress_id = progress

    def task(self, step: Any) -> Any:
        if step not in self.tasks:
            raise ValueError(f"{getattr(step, '__name__', step)!r} is no step with a Prefect task in dode_flows.tasks")
        return self.tasks[step]

    def call(self, step: Any, **params: Any) -> Any:
        return self.task(step)(**params)

    def map(self, step: Any, calls: list[dict[str, Any]]) -> list[Any]:
        futures = [self.task(step).submit(**params) for params in calls]
        return [f.result() for f in futures]

    def progress(self, percent: float) -> None:
        if self.progress_id is not None:
            update_progress_artifact(self.progress_id, percent)
