"""The Prefect tasks, each wrapping one step of ``flows.steps`` with its retry and cache policy, and the
Prefect wiring the flows share: cache keys, run provenance, link artifacts, settled task runs.

Tasks exchange registry ids and small JSON configs, never tensors. A task's Prefect cache key is the
sha256 of its name, the dode version and its (JSON) parameters, which include the registry URI and the
ids of its inputs; the registry itself is content-addressed, so every step also looks its artifact up
by (kind, key, params) before computing, and a rerun resumes even with a fresh Prefect database.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import runtime, task
from prefect.artifacts import (
    MarkdownArtifact,
    acreate_link_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext

import dode
from dode.cli.commands import get_command
from dode.report import render_report
from dode.store.manifest import HEX64
from dode.store.registry import Registry

from . import steps

CHECKOUT = Path(__file__).resolve().parents[1]  # the code the flows run: a git checkout, or an installed copy
RETRY_IO = {"retries": 2, "retry_delay_seconds": 1}  # registry reads and writes (local disk or object store)
PROGRESS_EVERY_S = 2.0  # sampling progress artifacts: for shards that run longer, updated at most this often


def cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> str:
    """Prefect cache key: content hash of the task name, the dode version and the JSON parameters -- unless the
    result cached under it names an artifact the registry no longer holds intact (wiped, restored, repaired):
    then the next key of the chain, so the task runs again (and says so) instead of trusting the cache."""
    blob = json.dumps({"task": ctx.task.name, "dode": dode.__version__, "params": params}, sort_keys=True)
    key = f"dode-{ctx.task.name}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"
    store, registry = ctx.result_store, params.get("registry")
    for generation in range(MAX_RECOMPUTES):
        candidate = key if generation == 0 else f"{key}-r{generation}"
        if store is None or registry is None or not store.exists(candidate):
            return candidate
        cached = store.read(candidate).result
        if registry_holds(registry, cached):
            return candidate
        steps.log.warning("%s: the cached result %s is missing or damaged in registry %s; recomputing",
                    ctx.task.name, str(cached)[:12], registry)
    return f"{key}-r{MAX_RECOMPUTES}"


def registry_holds(registry: str, result: object) -> bool:
    """Whether a cached task result can be trusted: not an artifact id, or an artifact intact in the registry
    together with the artifacts it was made from (a samples index and its chunks)."""
    if not (isinstance(result, str) and HEX64.fullmatch(result)):
        return True
    reg = steps.open_registry(registry)
    return reg.intact(result) and all(reg.intact(parent) for parent in reg.get(result).parents)


CACHED = {"cache_key_fn": cache_key, "persist_result": True}
MAX_RECOMPUTES = 100  # cached results replaced after registry damage, per task and parameters


@lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The dode version, and the git commit of the checkout the flows run from (when they run from one)."""
    out = {"dode_version": dode.__version__}
    if not (CHECKOUT / ".git").exists():
        return out
    try:
        head = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return out
    if head.returncode == 0:
        out["git_commit"] = head.stdout.strip()
    return out


def provenance() -> dict[str, str]:
    """Who made an artifact, for its manifest: the code version, the Prefect flow run (id, name, flow,
    deployment) and task run. The library reads none of this itself; every publishing step is given it."""
    out = dict(code_version())
    if runtime.flow_run.id:
        out.update(flow_run_provenance(str(runtime.flow_run.id)))
    if runtime.task_run.id:
        out["prefect_task_run_id"] = str(runtime.task_run.id)
    return out


@lru_cache(maxsize=16)
def flow_run_provenance(flow_run_id: str) -> dict[str, str]:
    """The flow run's name, flow and deployment: looked up once per flow run and process (in a Dask worker,
    each is a request to the API)."""
    run = {"prefect_flow_run_id": flow_run_id, "prefect_flow_run_name": runtime.flow_run.name,
           "prefect_flow_name": runtime.flow_run.flow_name, "prefect_deployment_id": runtime.deployment.id,
           "prefect_deployment_name": runtime.deployment.name}
    return {k: str(v) for k, v in run.items() if v}


def link_artifacts(reg: Registry, ids: list[str]) -> None:
    """One Prefect artifact per registry entry the run produced or used (the UI's way to them), sent concurrently
    (one request each): for a remote registry a link to its fsspec URL, for a local one (a file:// link opens
    nothing from a browser or another machine) a markdown note; both give the ``dode artifacts get`` command."""
    arts = [reg.get(id) for id in dict.fromkeys(ids)]

    def create(art: Any, client: Any) -> Any:
        key, get = f"dode-{art.kind}-{art.id[:12]}", get_command(reg, art)
        if not reg.local:
            return acreate_link_artifact(link=reg.url(art), link_text=f"{art.kind}: {art.key}", key=key,
                                         description=f"registry {reg.uri}, artifact {art.id}: `{get}`", client=client)
        return MarkdownArtifact(markdown=f"**{art.kind}: {art.key}**\n\n`{get}`", key=key,
                                description=f"registry {reg.uri}, artifact {art.id}").acreate(client)

    async def send() -> None:
        async with get_client() as client:
            await asyncio.gather(*(create(art, client) for art in arts))

    asyncio.run(send())


def settled_task_runs(flow_run_id: Any, timeout: float = 30.0) -> list[TaskRun]:
    """The flow run's task runs once the server has recorded them all as final (task-run states reach the
    server as events, recorded asynchronously): polled until every run is final and nothing changes."""
    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline, last, runs = time.monotonic() + timeout, None, []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs, page = [], [None]
            while len(page):
                page = client.read_task_runs(flow_run_filter=flt, limit=200, offset=len(runs))
                runs += page
            now = sorted((str(r.id), str(r.state_type)) for r in runs)
            if now == last and all(r.state is not None and r.state.is_final() for r in runs):
                break
            last = now
            time.sleep(0.5)
    return runs


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


@task(name="gaussian", **CACHED)
def gaussian(registry: str, model_id: str, n_samples: int, first_seed: int, batch_size: int) -> str:
    """The analytic first step's Gaussian of the model (from its own many-step samples)."""
    return steps.gaussian(registry, model_id, n_samples, first_seed, batch_size, provenance=provenance())


@task(name="distill", **CACHED)
def distill(registry: str, trajectory_id: str, solver: str, guard: bool, holdout: float, correction: str,
            objective: str = "step", objective_options: dict | None = None, alignment: str = "exact",
            first_step: str = "network", gaussian_id: str | None = None) -> str:
    """D-ODE lambdas for ``solver``, fitted to a stored teacher trajectory."""
    return steps.distill(registry, trajectory_id, solver, guard, holdout, correction, objective, objective_options,
                         alignment, first_step, gaussian_id, provenance=provenance())


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


@task(name="report", **CACHED, retries=2, retry_delay_seconds=1)
def report(registry: str, title: str, meta: dict, rows: list[dict], cells: list[dict], teacher_samples: str,
           parents: list[str]) -> str:
    """The sweep's report as a registry artifact (``dode.report.render_report``)."""
    return render_report(steps.open_registry(registry), title, meta, rows, cells, teacher_samples, parents,
                         provenance=provenance())
