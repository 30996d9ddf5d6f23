"""Side-by-side evaluation inside a flow: base and D-ODE samples per (solver, NFE) cell and the teacher's,
each scored by every metric. Shared by the pipeline and score flows."""

from __future__ import annotations

from prefect import get_run_logger

from . import tasks
from .checks import FEATURES, check_metrics
from .shards import Runner, sample_jobs, score_all
from .steps import auto_metrics
from .sweep import result_rows, sampling_jobs, score_items, with_samples


def resolve_metrics(metrics: list[str], model: str) -> list[str]:
    """``["auto"]`` -> the model's default metrics; anything else is checked against the known metrics."""
    check_metrics(metrics)
    return auto_metrics(model) if list(metrics) == ["auto"] else list(dict.fromkeys(metrics))


def evaluate_cells(
    run: Runner, registry: str, model_id: str, model: str, cells: list[dict], teacher: dict, metrics: list[str],
    reference: str | None, n_samples: int, first_seed: int, batch_size: int, num_shards: int,
) -> tuple[list[dict], list[dict], str, list[str]]:
    """Sample and score every cell ({solver, nfe, grid, lambdas}) base and D-ODE, and the teacher once per grid
    family, with ``run`` (``flows.shards.shard_runner``). Returns (rows, cells with their samples ids, the
    teacher samples id, every artifact id used)."""
    log = get_run_logger()
    families, jobs = sampling_jobs(model, cells, teacher, n_samples, first_seed, batch_size)
    log.info("sampling %d jobs x %d samples in %d shard(s)", len(jobs), n_samples, num_shards)
    ids = sample_jobs(run, registry, jobs, num_shards)
    cells, teachers = with_samples(cells, families, ids)
    refs = {m: reference or tasks.reference_stats(registry, model_id, m, n_samples, first_seed)
            for m in metrics if m in FEATURES}
    items = score_items(cells, teachers, refs, metrics)
    log.info("scoring %d samples artifacts x %d metric(s)", len(ids), len(metrics))
    score_ids = score_all(run, registry, items)
    rows = result_rows(registry, cells, teachers, items, score_ids, metrics)
    return rows, cells, teachers[families[0]], [*ids, *refs.values(), *score_ids]
