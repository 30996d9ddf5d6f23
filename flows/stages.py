"""The single-stage flows: a teacher trajectory, one distillation, one sampling job, scores.

Each takes its stage's configuration (``dode.pipeline.runs``) and runs on its own (``dode run STAGE``, or a deployment
in prefect.yaml), finding what earlier runs stored: the distill flow reuses the teacher the pipeline
computed for the same grid and teacher.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

import dode
from dode.core.gaussian import NETWORK
from dode.metrics.scores import FEATURES, resolve_metrics
from dode.pipeline.runs import DistillRun, SampleRun, ScoreRun, TeacherRun
from dode.pipeline.steps import check_reference, model, open_registry, registry_uri
from dode.pipeline.sweep_run import evaluate_cells, reevaluation_cells, sample_jobs, score_all
from dode.store.lambdas import load_lambdas

from . import tasks
from .runners import IN_PROCESS, TaskExecutor, run_on


@flow(name="dode-teacher", version=dode.__version__, task_runner=IN_PROCESS)
def teacher_flow(config: TeacherRun = TeacherRun(), registry: str | None = None) -> str:
    """The teacher trajectory for student grids of ``steps`` steps, stored for reuse by every solver; returns
    the trajectory id.

    Args:
        config: the teacher stage (dode.pipeline.runs.TeacherRun): model, student grid, teacher
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
    """
    uri = registry_uri(registry)
    model_id = tasks.register_model(uri, config.model)
    traj = tasks.teacher(uri, model_id, config.grid.to_dict(), config.teacher)
    tasks.link_artifacts(open_registry(uri), [model_id, traj])
    return traj


@flow(name="dode-distill", version=dode.__version__, task_runner=IN_PROCESS)
def distill_flow(config: DistillRun = DistillRun(), registry: str | None = None) -> dict:
    """D-ODE lambdas for one solver and NFE: the teacher (found or computed; none stored for official
    alignment), then the fit; returns {"lambdas": id, "values", "trajectory", "gaussian"}.

    Args:
        config: the distill stage (dode.pipeline.runs.DistillRun): model, solver, nfe, grid family, first step, teacher, fit
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
    """
    grid = config.grid.to_dict()
    uri = registry_uri(registry)
    reg = open_registry(uri)
    model_id = tasks.register_model(uri, config.model)
    exact = config.teacher.alignment == "exact"
    traj = tasks.teacher(uri, model_id, grid, config.teacher) if exact else None
    gaussian = tasks.gaussian(uri, model_id, config.teacher) if config.first_step != NETWORK else None
    lam_id = tasks.distill(uri, model_id, grid, config.solver, config.teacher, config.fit, config.first_step, traj,
                           gaussian)
    lam = load_lambdas(reg, lam_id)
    create_table_artifact([{"k": k, "lambda": v} for k, v in enumerate(lam.values)], key="dode-lambdas",
                          description=f"{config.model} {config.solver} NFE {config.nfe}: lambda per evaluation "
                                      f"(guard {lam.guard})")
    tasks.link_artifacts(reg, [model_id, *([traj] if traj else []), *([gaussian] if gaussian else []), lam_id])
    get_run_logger().info("lambdas %s: %s", lam_id[:12], [round(v, 4) for v in lam.values])
    return {"lambdas": lam_id, "values": list(lam.values), "trajectory": traj, "gaussian": gaussian}


@flow(name="dode-sample", version=dode.__version__, task_runner=IN_PROCESS)
def sample_flow(config: SampleRun, registry: str | None = None, dask: bool = False,
                dask_address: str | None = None) -> str:
    """A sampling job in shards, base or with D-ODE lambdas (the solver, grid and first step they were fitted
    with); returns the samples artifact id.

    Args:
        config: the sample stage (dode.pipeline.runs.SampleRun): model, base solver and nfe or lambdas, sampling
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
        dask: run the shards on a temporary local Dask cluster
        dask_address: run the shards on an existing Dask cluster (scheduler address)
    """
    uri = registry_uri(registry)
    reg = open_registry(uri)
    job = config.job(reg)  # with lambdas: their solver and grid
    lambdas = job.lambdas_id
    model_id = tasks.register_model(uri, config.model)
    (samples,) = run_on(sharded_flow, dask, dask_address, uri, [job.to_dict()], config.sampling.num_shards)
    tasks.link_artifacts(reg, [model_id, *([lambdas] if lambdas else []), samples])
    return samples


@flow(name="dode-shards", version=dode.__version__)
def sharded_flow(uri: str, jobs: list[dict], num_shards: int) -> list[str]:
    """Sampling jobs in shards on the task runner ``sample_flow`` chose (its own, or Dask's in this subflow)."""
    return sample_jobs(uri, jobs, num_shards, TaskExecutor())


@flow(name="dode-score", version=dode.__version__, task_runner=IN_PROCESS)
def score_flow(config: ScoreRun = ScoreRun(), registry: str | None = None, dask: bool = False,
               dask_address: str | None = None) -> list[dict]:
    """Scores of given samples (Fréchet distances), or a re-evaluation of registered lambdas against the model
    as it is now: the given ids, else the newest lambdas of every (solver, NFE, grid) registered for the
    model, each sampled base and D-ODE side by side with its own teacher (does a retrained model still
    profit from them?). Returns the result rows.

    Args:
        config: the score stage (dode.pipeline.runs.ScoreRun): model, samples or lambdas, sampling, scoring
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
        dask: run the tasks on a temporary local Dask cluster
        dask_address: run the tasks on an existing Dask cluster (scheduler address)
    """
    uri = registry_uri(registry)
    check_reference(open_registry(uri), config.scoring.reference)
    return run_on(scoring_flow, dask, dask_address, config, uri)


@flow(name="dode-scoring", version=dode.__version__)
def scoring_flow(config: ScoreRun, uri: str) -> list[dict]:
    """The score flow's work, on the task runner ``score_flow`` chose (its own, or Dask's in this subflow)."""
    model_id = tasks.register_model(uri, config.model)
    metrics = resolve_metrics(config.scoring.metrics, model(config.model))
    if config.samples:
        return score_given(uri, model_id, config, metrics)
    return reevaluate(uri, model_id, config, metrics)


def score_given(uri: str, model_id: str, config: ScoreRun, metrics: list[str]) -> list[dict]:
    """The Fréchet distances of given samples artifacts (RMSE needs the teacher's samples: not here)."""
    reg = open_registry(uri)
    s, fd = config.sampling, [m for m in metrics if m in FEATURES]
    refs = {m: config.scoring.reference or tasks.reference_stats(uri, model_id, m, s.n_samples, s.first_seed)
            for m in fd}
    items = [(reg.get(sid).id, m, refs[m]) for sid in config.samples for m in fd]
    ids = score_all(uri, items, TaskExecutor())
    rows = [{"samples": sid, **{k: reg.read_json(i)[k] for k in ("metric", "label", "value", "n")}}
            for (sid, _, _), i in zip(items, ids)]
    create_table_artifact(rows, key="dode-scores", description=f"{config.model}: scores of {len(config.samples)} "
                                                               "samples")
    tasks.link_artifacts(reg, [*(sid for sid, _, _ in items), *refs.values(), *ids])
    return rows


def reevaluate(uri: str, model_id: str, config: ScoreRun, metrics: list[str]) -> list[dict]:
    """Registered lambdas (the config's, else the newest of every key for the model) sampled with the model
    as it is now, base and D-ODE side by side, each with the teacher it was fitted to."""
    cells = reevaluation_cells(uri, config.model, config.lambdas)
    rows, _, _, used = evaluate_cells(uri, model_id, config.model, cells, metrics, config.sampling,
                                      config.scoring.reference, TaskExecutor())
    create_table_artifact(rows, key="dode-reevaluation", description=f"registered lambdas on {config.model} as it is now")
    tasks.link_artifacts(open_registry(uri), [model_id, *(c["lambdas"] for c in cells), *used])
    get_run_logger().info("re-evaluated %d lambdas; results in the table artifact 'dode-reevaluation'", len(cells))
    return rows
