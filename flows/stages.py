"""The single-stage flows: a teacher trajectory, one distillation, one sampling job, scores, a diffusers pipeline's
lambdas from prompts.

Each takes its stage's configuration (``dode.pipeline.runs``) and runs on its own (``dode run STAGE``, or a deployment
in prefect.yaml), finding what earlier runs stored: the distill flow reuses the teacher the pipeline
computed for the same grid and teacher. Each stage's order is the library's (``dode.pipeline.stages``); a flow
runs it on its task runner and adds the Prefect artifacts: tables, links, log lines.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

import dode
from dode.pipeline.runs import DistillRun, PromptDistillRun, SampleRun, ScoreRun, TeacherRun
from dode.pipeline.stages import (
    Outcome,
    run_distill,
    run_distill_pipeline,
    run_sample,
    run_score,
    run_teacher,
)
from dode.pipeline.steps import check_reference, open_registry, registry_uri

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
    out = run_teacher(config, uri, TaskExecutor())
    tasks.link_artifacts(open_registry(uri), out.artifacts)
    return out.value


@flow(name="dode-distill", version=dode.__version__, task_runner=IN_PROCESS)
def distill_flow(config: DistillRun = DistillRun(), registry: str | None = None) -> dict:
    """D-ODE lambdas for one solver and NFE: the teacher (found or computed; none stored for official
    alignment), then the fit; returns {"lambdas": id, "values", "trajectory", "gaussian"}.

    Args:
        config: the distill stage (dode.pipeline.runs.DistillRun): model, solver, nfe, grid family, first step, teacher, fit
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
    """
    uri = registry_uri(registry)
    out = run_distill(config, uri, TaskExecutor())
    publish_lambdas(uri, out, f"{config.model} {config.solver} NFE {config.nfe}")
    return out.value


@flow(name="dode-distill-pipeline", version=dode.__version__, task_runner=IN_PROCESS)
def distill_pipeline_flow(config: PromptDistillRun, registry: str | None = None) -> dict:
    """D-ODE lambdas for a diffusers text-to-image pipeline over prompts (found in the registry, else fitted), as
    `dode distill-pipeline` registers them; returns {"lambdas": id, "values"}.

    Args:
        config: the distill-pipeline stage (dode.pipeline.runs.PromptDistillRun): pipeline, prompts, device, solver,
            nfe, guidance, samples per prompt, teacher, fit
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
    """
    uri = registry_uri(registry)
    out = run_distill_pipeline(config, uri, TaskExecutor())
    publish_lambdas(uri, out, f"{config.pipeline} {config.solver} NFE {config.nfe} over {len(config.prompts)} prompts")
    return out.value


def publish_lambdas(uri: str, out: Outcome, what: str) -> None:
    """A distillation's Prefect artifacts: its lambdas as a table (``what`` they were fitted for, the guard's
    report), a link per registry entry; and a log line."""
    lam_id, values = out.value["lambdas"], out.value["values"]
    create_table_artifact([{"k": k, "lambda": v} for k, v in enumerate(values)], key="dode-lambdas",
                          description=f"{what}: lambda per evaluation (guard {out.info['guard']})")
    tasks.link_artifacts(open_registry(uri), out.artifacts)
    get_run_logger().info("lambdas %s: %s", lam_id[:12], [round(v, 4) for v in values])


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
    out = run_on(sampling_flow, dask, dask_address, config, uri)
    tasks.link_artifacts(open_registry(uri), out.artifacts)
    return out.value


@flow(name="dode-sampling", version=dode.__version__)
def sampling_flow(config: SampleRun, uri: str) -> Outcome:
    """The sample flow's work (``dode.pipeline.stages.run_sample``) on the task runner ``sample_flow`` chose (its
    own, or Dask's in this subflow)."""
    return run_sample(config, uri, TaskExecutor())


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
    """The score flow's work (``dode.pipeline.stages.run_score``) on the task runner ``score_flow`` chose (its own,
    or Dask's in this subflow), and its table: the scores, or the re-evaluation."""
    out = run_score(config, uri, TaskExecutor())
    if config.samples:
        create_table_artifact(out.value, key="dode-scores",
                              description=f"{config.model}: scores of {len(config.samples)} samples")
    else:
        create_table_artifact(out.value, key="dode-reevaluation",
                              description=f"registered lambdas on {config.model} as it is now")
    tasks.link_artifacts(open_registry(uri), out.artifacts)
    if not config.samples:
        get_run_logger().info("re-evaluated %d lambdas; results in the table artifact 'dode-reevaluation'",
                              out.info["lambdas"])
    return out.value
