"""Score flow: metrics of given samples, or a re-evaluation of registered lambdas against the current model.

Without ``samples`` it re-evaluates lambdas: the given ids, else the newest lambdas artifact of every
(solver, NFE, grid) registered for ``model``. Each is sampled with the model as it is now, base and
D-ODE side by side (the scheduled nightly deployment: does a retrained model still profit from them?).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

import dode
from dode.store.lambdas import load_lambdas

from . import tasks
from .checks import FEATURES, validate
from .common import link_artifacts
from .evaluate import evaluate_cells, resolve_metrics
from .shards import score_all, shard_runner
from .steps import open_registry, registry_uri


@flow(name="dode-score", version=dode.__version__)
def score_flow(
    model: str = "mixture-smooth",
    samples: list[str] | None = None,
    lambdas: list[str] | None = None,
    metrics: tuple[str, ...] = ("auto",),
    reference: str | None = None,
    n_samples: int = 1000,
    first_seed: int = 0,
    batch_size: int = 250,
    num_shards: int = 1,
    registry: str | None = None,
    dask: bool = False,
    dask_address: str | None = None,
) -> list[dict]:
    """Score ``samples`` (Fréchet distances), or re-evaluate ``lambdas``; returns the result rows."""
    validate("score", locals())
    log = get_run_logger()
    uri = registry_uri(registry)
    reg = open_registry(uri)
    model_id = tasks.register_model(uri, model)
    metric_list = resolve_metrics(list(metrics), model)
    if samples:
        if "rmse" in metric_list and list(metrics) != ["auto"]:
            raise ValueError("rmse pairs samples with the teacher's; re-evaluate lambdas (drop samples=) for it")
        fd = [m for m in metric_list if m in FEATURES]
        refs = {m: reference or tasks.reference_stats(uri, model_id, m, n_samples, first_seed) for m in fd}
        items = [(reg.get(s).id, m, refs[m]) for s in samples for m in fd]
        with shard_runner(dask, dask_address) as run:
            ids = score_all(run, uri, items)
        rows = [{"samples": s, **{k: reg.read_json(i)[k] for k in ("metric", "label", "value", "n")}}
                for (s, _, _), i in zip(items, ids)]
        create_table_artifact(rows, key="dode-scores", description=f"{model}: scores of {len(samples)} samples")
        link_artifacts(reg, [*(s for s, _, _ in items), *refs.values(), *ids])
        return rows

    arts = [reg.get(i) for i in lambdas] if lambdas else list(
        {a.key: a for a in reversed(reg.find("lambdas", model=model))}.values())
    if not arts:
        raise ValueError(f"no lambdas registered for model {model!r} in {uri}; run the pipeline or distill flow first")
    for a in arts:
        if a.kind != "lambdas":
            raise ValueError(f"artifact {a.short} is a {a.kind!r} artifact, not 'lambdas'")
    cells = [{"solver": a.params["solver"], "nfe": a.params["nfe"], "grid": a.params["grid"], "lambdas": a.id}
             for a in arts]
    record = load_lambdas(reg, arts[0]).teacher
    teacher = {"solver": record["solver"], "factor": record["factor"]}
    with shard_runner(dask, dask_address) as run:
        rows, _, _, used = evaluate_cells(run, uri, model_id, model, cells, teacher, metric_list, reference,
                                          n_samples, first_seed, batch_size, num_shards)
    create_table_artifact(rows, key="dode-reevaluation", description=f"registered lambdas on {model} as it is now")
    link_artifacts(reg, [model_id, *(a.id for a in arts), *used])
    log.info("re-evaluated %d lambdas; results in the table artifact 'dode-reevaluation'", len(arts))
    return rows
