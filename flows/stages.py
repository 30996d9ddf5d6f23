"""The single-stage flows: a teacher trajectory, one distillation, one sampling job, scores.

Each runs on its own (``dode run STAGE``, or a deployment in prefect.yaml) and finds what earlier runs
stored: the distill flow reuses the teacher the pipeline computed for the same grid, seeds and settings.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

import dode
from dode.checks import check_distill, check_reference, check_sample, check_score, check_teacher_stage
from dode.generate import SamplingJob
from dode.grids import GridSpec
from dode.metrics.scores import FEATURES, resolve_metrics
from dode.store.lambdas import load_lambdas

from . import steps, tasks
from .pipeline import evaluate_cells
from .shards import Runner, sample_jobs, score_all, shard_runner
from .steps import open_registry, registry_uri


@flow(name="dode-teacher", version=dode.__version__)
def teacher_flow(
    model: str = "mixture-smooth",
    steps: int = 5,
    family: str = "karras",
    teacher_factor: int = 10,
    teacher_solver: str = "dpmpp_2m",
    n_distill: int = 256,
    distill_seed: int = 1_000_000,
    batch_size: int = 250,
    registry: str | None = None,
) -> str:
    """The teacher trajectory for student grids of ``steps`` steps, stored for reuse by every solver; returns
    the trajectory id.

    Args:
        model: model name (e.g. digits-ddpm, mixture-smooth), a diffusers folder or a hub id
        steps: student grid steps the teacher serves
        family: grid family: karras, time_uniform, time_quadratic, logsnr_uniform, ddim
        teacher_factor: teacher steps per student step
        teacher_solver: teacher solver
        n_distill: teacher samples
        distill_seed: first seed of the teacher samples
        batch_size: samples per batch and per stored chunk
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
    """
    check_teacher_stage(locals())
    uri = registry_uri(registry)
    model_id = tasks.register_model(uri, model)
    traj = tasks.teacher(uri, model_id, GridSpec(family, steps).to_dict(), teacher_factor, teacher_solver, n_distill,
                         distill_seed, batch_size)
    tasks.link_artifacts(open_registry(uri), [model_id, traj])
    return traj


@flow(name="dode-distill", version=dode.__version__)
def distill_flow(
    model: str = "mixture-smooth",
    solver: str = "euler",
    nfe: int = 5,
    family: str = "karras",
    teacher_factor: int = 10,
    teacher_solver: str = "dpmpp_2m",
    n_distill: int = 256,
    distill_seed: int = 1_000_000,
    batch_size: int = 250,
    guard: bool = True,
    holdout: float = 0.5,
    correction: str = "data",
    objective: str = "step",
    objective_options: dict | None = None,
    alignment: str = "exact",
    first_step: str = "network",
    registry: str | None = None,
) -> dict:
    """D-ODE lambdas for one solver and NFE: the teacher (found or computed), then the fit; returns
    {"lambdas": id, "values", "trajectory", "gaussian"}.

    Args:
        model: model name (e.g. digits-ddpm, mixture-smooth), a diffusers folder or a hub id
        solver: base solver
        nfe: network evaluations per sample
        family: grid family: karras, time_uniform, time_quadratic, logsnr_uniform, ddim
        teacher_factor: teacher steps per student step
        teacher_solver: teacher solver
        n_distill: teacher/distillation samples
        distill_seed: first seed of the distillation samples
        batch_size: samples per batch and per stored chunk
        guard: held-out guard on the fitted lambdas
        holdout: the guard's fraction of the distillation noise (dode.distill.split)
        correction: D-ODE correction flavour: data or noise
        objective: distillation objective (dode.objectives), e.g. step
        objective_options: the objective's options, e.g. iterations=150 (objective final)
        alignment: teacher targets: exact (the refined student grid) or official (the reference code's)
        first_step: network, or analytic / flowmap: the first evaluation by a Gaussian of the model's own
            samples (nfe stays the network calls; the grid gets one step more)
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
    """
    check_distill(locals())
    grid = GridSpec.for_calls(family, solver, nfe, first_step).to_dict()
    uri = registry_uri(registry)
    reg = open_registry(uri)
    model_id = tasks.register_model(uri, model)
    traj = tasks.teacher(uri, model_id, grid, teacher_factor, teacher_solver, n_distill, distill_seed, batch_size)
    gaussian = tasks.gaussian(uri, model_id, n_distill, distill_seed, batch_size) if first_step != "network" else None
    lam_id = tasks.distill(uri, traj, solver, guard, holdout, correction, objective, objective_options, alignment,
                           first_step, gaussian)
    lam = load_lambdas(reg, lam_id)
    create_table_artifact([{"k": k, "lambda": v} for k, v in enumerate(lam.values)], key="dode-lambdas",
                          description=f"{model} {solver} NFE {nfe}: lambda per evaluation (guard {lam.guard})")
    tasks.link_artifacts(reg, [model_id, traj, *([gaussian] if gaussian else []), lam_id])
    get_run_logger().info("lambdas %s: %s", lam_id[:12], [round(v, 4) for v in lam.values])
    return {"lambdas": lam_id, "values": list(lam.values), "trajectory": traj, "gaussian": gaussian}


@flow(name="dode-sample", version=dode.__version__)
def sample_flow(
    model: str = "mixture-smooth",
    solver: str | None = None,
    nfe: int | None = None,
    family: str = "karras",
    lambdas: str | None = None,
    first_step: str = "network",
    gaussian: str | None = None,
    n_samples: int = 1000,
    first_seed: int = 0,
    batch_size: int = 250,
    num_shards: int = 1,
    registry: str | None = None,
    dask: bool = False,
    dask_address: str | None = None,
) -> str:
    """A sampling job in shards, base or with D-ODE lambdas (the solver and grid they were fitted on);
    returns the samples artifact id.

    Args:
        model: model name (e.g. digits-ddpm, mixture-smooth), a diffusers folder or a hub id
        solver: base solver (not with lambdas)
        nfe: network evaluations per sample (not with lambdas)
        family: grid family: karras, time_uniform, time_quadratic, logsnr_uniform, ddim
        lambdas: lambdas artifact id: sample its solver, grid and first step with D-ODE
        first_step: network, or analytic / flowmap with a gaussian (not with lambdas: they carry theirs)
        gaussian: gaussian artifact id for an analytic first step (dode gaussian, or the distill stage's)
        n_samples: samples, from seed first_seed on
        first_seed: first seed of the samples
        batch_size: samples per batch and per stored chunk
        num_shards: sampling shards
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
        dask: run shards on a temporary local Dask cluster
        dask_address: run shards on an existing Dask cluster (scheduler address)
    """
    check_sample(locals())
    uri = registry_uri(registry)
    reg = open_registry(uri)
    if lambdas is not None:
        lam = reg.get(lambdas)
        if lam.kind != "lambdas":
            raise ValueError(f"artifact {lam.short} is a {lam.kind!r} artifact, not 'lambdas'")
        solver, grid, lambdas = lam.params["solver"], None, lam.id  # the lambdas imply their grid
    else:
        grid = GridSpec.for_calls(family, solver, nfe, first_step).to_dict()
    model_id = tasks.register_model(uri, model)
    job = SamplingJob(model, solver, grid, lambdas, n_samples, first_seed, batch_size, first_step, gaussian).to_dict()
    with shard_runner(dask, dask_address) as run:
        (samples,) = sample_jobs(run, uri, [job], num_shards)
    tasks.link_artifacts(reg, [model_id, *([lambdas] if lambdas else []), samples])
    return samples


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
    """Scores of given samples (Fréchet distances), or a re-evaluation of registered lambdas against the model
    as it is now: the given ids, else the newest lambdas of every (solver, NFE, grid) registered for the
    model, each sampled base and D-ODE side by side (does a retrained model still profit from them?).
    Returns the result rows.

    Args:
        model: model name (e.g. digits-ddpm, mixture-smooth), a diffusers folder or a hub id
        samples: samples artifact ids to score
        lambdas: lambdas ids to re-evaluate (default: all of the model's)
        metrics: fd-digits, fd-pixels, fid, rmse, or auto (the model's own)
        reference: reference-stats artifact id for the Fréchet distances
        n_samples: evaluation samples per cell (and reference draws)
        first_seed: first seed of the evaluation samples
        batch_size: samples per batch and per stored chunk
        num_shards: sampling shards per job
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
        dask: run shards on a temporary local Dask cluster
        dask_address: run shards on an existing Dask cluster (scheduler address)
    """
    check_score(locals())
    uri = registry_uri(registry)
    check_reference(open_registry(uri), reference)
    model_id = tasks.register_model(uri, model)
    metric_list = resolve_metrics(metrics, steps.model(model))
    with shard_runner(dask, dask_address) as run:
        if samples:
            return score_given(run, uri, model_id, model, samples, list(metrics), metric_list, reference, n_samples,
                               first_seed)
        return reevaluate(run, uri, model_id, model, lambdas, metric_list, reference, n_samples, first_seed,
                          batch_size, num_shards)


def score_given(run: Runner, uri: str, model_id: str, model: str, samples: list[str], asked: list[str],
                metrics: list[str], reference: str | None, n_samples: int, first_seed: int) -> list[dict]:
    """The Fréchet distances of given samples artifacts (RMSE needs the teacher's samples: not here)."""
    if "rmse" in metrics and asked != ["auto"]:
        raise ValueError("rmse pairs samples with the teacher's; re-evaluate lambdas (drop samples=) for it")
    reg = open_registry(uri)
    fd = [m for m in metrics if m in FEATURES]
    refs = {m: reference or tasks.reference_stats(uri, model_id, m, n_samples, first_seed) for m in fd}
    items = [(reg.get(s).id, m, refs[m]) for s in samples for m in fd]
    ids = score_all(run, uri, items)
    rows = [{"samples": s, **{k: reg.read_json(i)[k] for k in ("metric", "label", "value", "n")}}
            for (s, _, _), i in zip(items, ids)]
    create_table_artifact(rows, key="dode-scores", description=f"{model}: scores of {len(samples)} samples")
    tasks.link_artifacts(reg, [*(s for s, _, _ in items), *refs.values(), *ids])
    return rows


def first_step_base(params: dict) -> dict:
    """For lambdas fitted with an analytic first step: the base solver with the same first step beside them."""
    if params.get("first_step", "network") == "network":
        return {}
    return {"gaussian": params["gaussian"],
            "first_bases": {f"base+{params['first_step']}": {"grid": params["grid"], "first_step": params["first_step"]}}}


def reevaluate(run: Runner, uri: str, model_id: str, model: str, lambdas: list[str] | None, metrics: list[str],
               reference: str | None, n_samples: int, first_seed: int, batch_size: int, num_shards: int) -> list[dict]:
    """Registered lambdas (``lambdas``, else the newest of every key for ``model``) sampled with the model
    as it is now, base and D-ODE side by side, with the teacher they were fitted to."""
    reg = open_registry(uri)
    arts = [reg.get(i) for i in lambdas] if lambdas else list(
        {a.key: a for a in reversed(reg.find("lambdas", model=model))}.values())
    if not arts:
        raise ValueError(f"no lambdas registered for model {model!r} in {uri}; run the pipeline or distill flow first")
    for a in arts:
        if a.kind != "lambdas":
            raise ValueError(f"artifact {a.short} is a {a.kind!r} artifact, not 'lambdas'")
    cells = [{"solver": a.params["solver"], "nfe": a.params["nfe"], "grid": a.params["grid"], "lambdas": a.id,
              **first_step_base(a.params)} for a in arts]
    record = load_lambdas(reg, arts[0]).teacher
    teacher = {"solver": record["solver"], "factor": record["factor"]}
    rows, _, _, used = evaluate_cells(run, uri, model_id, model, cells, teacher, metrics, reference, n_samples,
                                      first_seed, batch_size, num_shards)
    create_table_artifact(rows, key="dode-reevaluation", description=f"registered lambdas on {model} as it is now")
    tasks.link_artifacts(reg, [model_id, *(a.id for a in arts), *used])
    get_run_logger().info("re-evaluated %d lambdas; results in the table artifact 'dode-reevaluation'", len(arts))
    return rows
