"""The single stages in their order, run by an executor: the teacher; teacher -> Gaussian -> distill; a sampling
job; scores of given samples or a re-evaluation of registered lambdas; a diffusers pipeline's lambdas from prompts.

One copy of each order, beside the sweep's (``dode.pipeline.sweep_run``, whose fit order ``fit_all`` the distill
stage shares): the Prefect flows (``dode_flows.stages``) run each with ``dode_flows.runners.TaskExecutor`` and add only the
Prefect artifacts, ``InProcess`` runs the same steps as plain calls. Each returns an ``Outcome``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from dode.core.gaussian import NETWORK
from dode.metrics.scores import FEATURES, resolve_metrics
from dode.pipeline import steps
from dode.pipeline.runs import DistillRun, PromptDistillRun, SampleRun, ScoreRun, TeacherRun
from dode.pipeline.sweep_run import (
    Executor,
    evaluate_cells,
    fit_all,
    reevaluation_cells,
    sample_jobs,
    score_all,
    teachers,
)
from dode.store.lambdas import load_lambdas


class Outcome(NamedTuple):
    """What a stage did: ``value``, the stage's result (what its flow returns); ``artifacts``, the registry
    entries it made or used (the flows link each in the Prefect UI); ``info``, what else its tables and logs say."""

    value: Any
    artifacts: list[str]
    info: dict[str, Any] | None = None


def run_teacher(config: TeacherRun, uri: str, ex: Executor) -> Outcome:
    """The model, then the teacher of its student grid (stored for every solver on it); value: the trajectory id."""
    model_id = ex.call(steps.register_model, registry=uri, name=config.model)
    (trajectory,) = teachers(uri, model_id, config.family, config.teacher, [config.steps], ex).values()
    return Outcome(trajectory, [model_id, trajectory])


def run_distill(config: DistillRun, uri: str, ex: Executor) -> Outcome:
    """The model, then the fit's order (``fit_all``: teacher, Gaussian, distill) for one solver and NFE. Value:
    {"lambdas": id, "values", "trajectory" (none for official alignment), "gaussian"}; info: the guard's report."""
    model_id = ex.call(steps.register_model, registry=uri, name=config.model)
    fit = {"grid": config.grid.to_dict(), "solver": config.solver, "fit": config.fit, "first_step": config.first_step}
    trajectories, gaussian, (lam_id,) = fit_all(uri, model_id, config.family, config.teacher, [fit],
                                                config.first_step != NETWORK, ex)
    trajectory = next(iter(trajectories.values()), None)
    lam = load_lambdas(steps.open_registry(uri), lam_id)
    value = {"lambdas": lam_id, "values": list(lam.values), "trajectory": trajectory, "gaussian": gaussian}
    return Outcome(value, [model_id, *trajectories.values(), *([gaussian] if gaussian else []), lam_id],
                   {"guard": lam.guard})


def run_distill_pipeline(config: PromptDistillRun, uri: str, ex: Executor) -> Outcome:
    """A diffusers pipeline's lambdas over the prompts (``steps.distill_pipeline``: found, else fitted). Value:
    {"lambdas": id, "values"}; info: the guard's report."""
    lam_id = ex.call(steps.distill_pipeline, registry=uri, pipeline=config.pipeline, prompts=list(config.prompts),
                     config=config.distillation, device=config.device)
    lam = load_lambdas(steps.open_registry(uri), lam_id)
    return Outcome({"lambdas": lam_id, "values": list(lam.values)}, [lam_id], {"guard": lam.guard})


def run_sample(config: SampleRun, uri: str, ex: Executor) -> Outcome:
    """A sampling job in ``config.sampling.num_shards`` shards: base, or with D-ODE lambdas (their solver, and
    the grid and first step they imply). Value: the samples artifact id."""
    job = config.job(steps.open_registry(uri))  # with lambdas: their solver and grid
    lambdas = job.lambdas_id
    model_id = ex.call(steps.register_model, registry=uri, name=config.model)
    (samples,) = sample_jobs(uri, [job.to_dict()], config.sampling.num_shards, ex)
    return Outcome(samples, [model_id, *([lambdas] if lambdas else []), samples])


def run_score(config: ScoreRun, uri: str, ex: Executor) -> Outcome:
    """Scores of the given samples (``score_given``), else a re-evaluation of registered lambdas
    (``reevaluate``); value: the result rows."""
    model_id = ex.call(steps.register_model, registry=uri, name=config.model)
    metrics = resolve_metrics(config.scoring.metrics, steps.model(config.model))
    return (score_given if config.samples else reevaluate)(uri, model_id, config, metrics, ex)


def score_given(uri: str, model_id: str, config: ScoreRun, metrics: list[str], ex: Executor) -> Outcome:
    """The Fréchet distances of given samples artifacts (RMSE needs the teacher's samples: not here)."""
    reg = steps.open_registry(uri)
    s, fd = config.sampling, [m for m in metrics if m in FEATURES]
    refs = {m: config.scoring.reference or ex.call(steps.reference_stats, registry=uri, model_id=model_id, metric=m,
                                                    n_samples=s.n_samples, first_seed=s.first_seed) for m in fd}
    items = [(reg.get(sid).id, m, refs[m]) for sid in config.samples for m in fd]
    ids = score_all(uri, items, ex)
    rows = [{"samples": sid, **{k: reg.read_json(i)[k] for k in ("metric", "label", "value", "n")}}
            for (sid, _, _), i in zip(items, ids)]
    return Outcome(rows, [*(sid for sid, _, _ in items), *refs.values(), *ids])


def reevaluate(uri: str, model_id: str, config: ScoreRun, metrics: list[str], ex: Executor) -> Outcome:
    """Registered lambdas (the config's, else the newest of every key for the model) sampled with the model as it
    is now, base and D-ODE side by side, each with the teacher it was fitted to; info: how many lambdas."""
    cells = reevaluation_cells(uri, config.model, config.lambdas)
    rows, _, _, used = evaluate_cells(uri, model_id, config.model, cells, metrics, config.sampling,
                                      config.scoring.reference, ex)
    return Outcome(rows, [model_id, *(c["lambdas"] for c in cells), *used], {"lambdas": len(cells)})
