"""Prefect wiring shared by the flows: cache keys, run provenance, link artifacts, settled task runs.

Tasks exchange registry ids and small JSON configs, never tensors. A task's Prefect cache key is the
sha256 of its name, the dode version and its (JSON) parameters, which include the registry URI and the
ids of its inputs; the registry itself is content-addressed, so every task also looks its artifact up
by (kind, key, params) before computing, and a rerun resumes even with a fresh Prefect database.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from prefect import runtime
from prefect.artifacts import acreate_link_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext

import dode
from dode.store.registry import Artifact, Registry


def cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> str:
    """Prefect cache key: content hash of the task name, the dode version and the JSON parameters."""
    blob = json.dumps({"task": ctx.task.name, "dode": dode.__version__, "params": params}, sort_keys=True)
    return f"dode-{ctx.task.name}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


CACHED = {"cache_key_fn": cache_key, "persist_result": True}


def provenance() -> dict[str, str]:
    """The Prefect flow run and task run that produced an artifact (recorded in its manifest)."""
    out = {"prefect_flow_run_id": runtime.flow_run.id, "prefect_task_run_id": runtime.task_run.id,
           "prefect_flow_name": runtime.flow_run.flow_name}
    return {k: str(v) for k, v in out.items() if v}


def artifact_url(reg: Registry, art: Artifact) -> str:
    """Where an artifact's manifest lives: a file:// URI for a local registry, the fsspec URL otherwise."""
    path = reg.manifest_path(art.id)
    return Path(path).as_uri() if reg.local else f"{reg.uri.split('://', 1)[0]}://{path}"


def link_artifacts(reg: Registry, ids: list[str]) -> None:
    """One Prefect link artifact per registry entry the run produced or used (the UI's way to them), sent
    concurrently (one request each)."""
    arts = [reg.get(id) for id in dict.fromkeys(ids)]

    async def send() -> None:
        async with get_client() as client:
            await asyncio.gather(*(acreate_link_artifact(
                link=artifact_url(reg, art), link_text=f"{art.kind}: {art.key}", key=f"dode-{art.kind}-{art.id[:12]}",
                description=f"registry {reg.uri}, artifact {art.id}", client=client) for art in arts))

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
