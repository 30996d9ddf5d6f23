"""The Prefect tasks -- the library's steps (``dode.pipeline.steps``) themselves, each with its retry and cache
policy -- and the Prefect wiring the flows share: cache keys, the hooks that give the steps the run's
provenance and progress artifacts, link artifacts, settled task runs.

Tasks exchange registry ids and frozen configurations, never tensors. A task's Prefect cache key is the
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
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from pydantic_core import to_jsonable_python

import dode
from dode.pipeline import steps
from dode.pipeline.commands import get_command
from dode.store.manifest import HEX64
from dode.store.registry import Registry

CHECKOUT = Path(__file__).resolve().parents[1]  # the code the flows run: a git checkout, or an installed copy
RETRY_IO = {"retries": 2, "retry_delay_seconds": 1}  # registry reads and writes (local disk or object store)
PROGRESS_EVERY_S = 2.0  # sampling progress artifacts: for shards that run longer, updated at most this often


def cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> str:
    """Prefect cache key: content hash of the task name, the dode version and the JSON parameters -- unless the
    result cached under it names an artifact the registry no longer holds intact (wiped, restored, repaired):
    then the next key of the chain, so the task runs again (and says so) instead of trusting the cache."""
    blob = json.dumps({"task": ctx.task.name, "dode": dode.__version__, "params": to_jsonable_python(params)},
                      sort_keys=True)
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
    (its manifest and its own files: for a samples job, its index, not its chunks' bytes -- the check costs
    the same whatever the size of the job; a damaged chunk is refused when it is read)."""
    return not (isinstance(result, str) and HEX64.fullmatch(result)) or steps.open_registry(registry).intact(result)


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


@task(name="open-progress", cache_policy=NO_CACHE)
def open_progress(description: str) -> Any:
    """The sweep's progress bar, opened in a task so that it lists under the run's task artifacts, below the
    report (the Prefect UI shows a flow run's own artifacts first, in no fixed order among them)."""
    return create_progress_artifact(0.0, key="dode-pipeline-progress", description=description)


@task(name="publish-results", cache_policy=NO_CACHE)
def publish_results(registry: str, ids: list[str], rows: list[dict], description: str) -> None:
    """The results table and one link per registry entry of the run, as task artifacts (below the report)."""
    link_artifacts(steps.open_registry(registry), ids)
    create_table_artifact(rows, key="dode-results", description=description)


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


def progress_artifact(description: str) -> steps.Progress:
    """A sampling shard's progress as a Prefect progress artifact, once it has run for PROGRESS_EVERY_S seconds,
    updated at most that often (and at the end); nothing when the step runs outside a Prefect task run (a plain
    call in a process that imported the flows)."""
    artifact, last = [], [time.monotonic()]
    if TaskRunContext.get() is None:
        return lambda done, total: None

    def advance(done: int, total: int) -> None:
        if time.monotonic() - last[0] < PROGRESS_EVERY_S and not (artifact and done == total):
            return
        if not artifact:
            artifact.append(create_progress_artifact(0.0, description=description))
        update_progress_artifact(artifact[0], 100.0 * done / total)
        last[0] = time.monotonic()

    return advance


# The steps report to Prefect in every process that imports this module (a Dask worker does, to unpickle a
# task: its cache key function lives here).
steps.use_hooks(steps.Hooks(provenance=provenance, progress=progress_artifact))

# The model artifact is never cached, so a retrained model is always noticed.
register_model = task(steps.register_model, name="register-model", cache_policy=NO_CACHE, **RETRY_IO)
teacher = task(steps.teacher, name="teacher", **CACHED)
gaussian = task(steps.gaussian, name="gaussian", **CACHED)
distill = task(steps.distill, name="distill", **CACHED)
distill_pipeline = task(steps.distill_pipeline, name="distill-pipeline", **CACHED)
sample = task(steps.sample, name="sample", **CACHED, retries=1, retry_delay_seconds=1)
gather_samples = task(steps.gather_samples, name="gather-samples", **CACHED, **RETRY_IO)
reference_stats = task(steps.reference_stats, name="reference-stats", **CACHED, **RETRY_IO)
score = task(steps.score, name="score", **CACHED, **RETRY_IO)
report = task(steps.report, name="report", **CACHED, retries=2, retry_delay_seconds=1)
STEPS = (register_model, teacher, gaussian, distill, distill_pipeline, sample, gather_samples, reference_stats, score,
         report)
