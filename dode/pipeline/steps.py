"""The pipeline's steps, as plain library functions: find the artifact in the registry, else load -> library
call -> publish; return its id. The Prefect tasks are these functions (``dode_flows.tasks`` only adds the retry
and cache policy); ``bench/`` calls them in a plain loop to measure what the orchestration costs.

Every step takes the registry URI, input artifact ids and frozen configurations (``dode.distillation.config``), and
returns an artifact id. Who made an artifact (recorded in its manifest) and how far a long step has come
are the orchestrator's to say: ``use_hooks`` installs its ``Hooks`` (the flows install Prefect's); by
default provenance is the code version only and progress goes nowhere. Progress messages go to the
``dode.flows`` logger (shipped to the Prefect run logs under a flow run).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from dode.common.devices import resolve_device
from dode.core.gaussian import NETWORK
from dode.core.gaussian import first_step as make_first_step
from dode.core.grids import GridSpec
from dode.core.rng import seeded_noise
from dode.core.sampling import network_calls
from dode.distillation.config import FitConfig
from dode.distillation.first_step import GaussianConfig, from_model, model_gaussian_key, same_size
from dode.distillation.fit import distill as distill_lambdas
from dode.distillation.stored import distill_from_states
from dode.distillation.teacher import TeacherConfig, TeacherPlan
from dode.distillation.teacher_parquet import write_teacher
from dode.integrations.diffusers.distill import (
    PipelineDistillConfig,
    load_pipeline,
    pipeline_lambdas_key,
    pipeline_lambdas_params,
    register_pipeline_lambdas,
)
from dode.integrations.diffusers.distill import distill_pipeline as fit_pipeline
from dode.metrics.fid import stats_from_images, stats_to_bytes
from dode.metrics.guard_features import guard_features
from dode.metrics.reference import reference_images
from dode.metrics.scores import extractor, score_samples
from dode.metrics.sources import STATS_FILE, implementation
from dode.metrics.spread import SETS, with_spread
from dode.models import Model, load_model
from dode.pipeline.generate import SamplingJob, run_sampling
from dode.pipeline.report import render_report
from dode.store.gaussians import load_gaussian, save_gaussian
from dode.store.lambdas import save_lambdas
from dode.store.location import registry_location
from dode.store.registry import Artifact, Registry
from dode.store.trajectory import read_steps

log = logging.getLogger("dode.flows")
TEACHER_FILE = "teacher.parquet"
Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class Hooks:
    """What an orchestrator tells the steps: ``provenance()``, who is making an artifact now (recorded in
    its manifest beside the registry's own: code version, host), and ``progress(description)``, a callback
    that follows a long step (a sampling shard's chunks)."""

    provenance: Callable[[], dict] = dict
    progress: Callable[[str], Progress] = lambda description: lambda done, total: None


HOOKS: list[Hooks] = [Hooks()]


def use_hooks(hooks: Hooks) -> None:
    """Install an orchestrator's hooks for this process (``dode_flows.tasks`` installs Prefect's when imported)."""
    HOOKS[0] = hooks


def provenance() -> dict:
    return HOOKS[0].provenance()


def registry_uri(uri: str | None) -> str:
    """The registry URI every step of a run uses: ``uri``, else $DODE_REGISTRY, else ./dode-registry;
    local paths made absolute (steps may run in other processes or directories)."""
    reg = Registry(registry_location(uri))
    return str(Path(reg.uri).resolve()) if reg.local and "://" not in reg.uri else reg.uri


@lru_cache(maxsize=8)
def open_registry(uri: str) -> Registry:
    """One Registry per URI and process (it caches the manifests it has read)."""
    return Registry(uri)


@lru_cache(maxsize=4)
def model(name: str) -> Model:
    """One loaded model per name and process; a diffusers model loads without hints about optional packages
    in the run logs (diffusers logs errors only, unless $DIFFUSERS_VERBOSITY says otherwise)."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # read when diffusers is first imported
    if "diffusers" in sys.modules:  # imported already
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    return load_model(name)


def check_reference(registry: Registry, reference: str | None) -> None:
    """A given reference must be a "reference-stats" artifact of this registry (checked before any work)."""
    if reference is None:
        return
    art = registry.get(reference)
    if art.kind != "reference-stats":
        raise ValueError(f"reference {art.short} is a {art.kind!r} artifact, not 'reference-stats'; pass the id "
                         "of feature statistics (dode fid --register, or a pipeline run's reference-stats)")


def register_model(registry: str, name: str) -> str:
    """The model as a "model" artifact (its diffusers folder, or a JSON description of an in-memory model):
    the root of every lineage."""
    reg, m = open_registry(registry), model(name)
    found = reg.find_intact("model", m.name, fingerprint=m.fingerprint)
    if found:
        return found[0].id
    info = {"name": m.name, "fingerprint": m.fingerprint, "shape": list(m.shape), "type": type(m.denoiser).__name__}
    files = {"model": m.folder} if m.folder is not None else {"model.json": json_bytes(info)}
    art = reg.publish("model", m.name, files, params=info,
                      provenance={**provenance(), "model": {"name": m.name, "fingerprint": m.fingerprint}})
    log.info("registered model %s as %s", name, art.short)
    return art.id


def gaussian(registry: str, model_id: str, teacher: TeacherConfig) -> str:
    """The analytic first step's Gaussian of the model: a stored Gaussian of its own samples of the same size and
    sampler (``dode gaussian``'s too, whatever its seeds), else one fitted to ``GaussianConfig``'s count of its
    many-step samples from the teacher's seeds (``dode.distillation.first_step.from_model``), as a "gaussian"
    artifact."""
    reg = open_registry(registry)
    m = model(reg.get(model_id).params["name"])
    config = GaussianConfig(first_seed=teacher.first_seed, batch_size=teacher.batch_size)
    found = reg.find_intact("gaussian", model_fingerprint=m.fingerprint, **same_size(config))
    if found:
        log.info("gaussian of %s found in the registry (%s)", m.name, found[0].short)
        return found[0].id
    gauss = from_model(m, config)
    art = save_gaussian(reg, gauss, model_gaussian_key(m.name, config), [model_id], {"model": m.name, **gauss.source},
                        provenance=provenance())
    log.info("gaussian of %s (%d model samples) -> %s", m.name, config.n_samples, art.short)
    return art.id


# Teacher and distillation: one stored teacher per student grid (``dode.distillation.teacher``), one fit per solver on it.
def student_grid_teacher(m: Model, spec: GridSpec, teacher: TeacherConfig) -> TeacherPlan:
    """The exact-alignment teacher plan of a student grid, keeping its state at every student grid point."""
    return teacher.plan(spec.sigmas(m.denoiser), teacher.solver).on_student_grid()


def teacher(registry: str, model_id: str, grid: dict, teacher: TeacherConfig) -> str:
    """The teacher on the ``teacher.factor``-fold refinement of a student grid, from the teacher's seeded noise;
    only its states on the student grid are stored (a "trajectory" artifact). Every solver on that grid
    reuses it (exact alignment: an official fit runs its own teacher)."""
    teacher.check_stored()
    reg = open_registry(registry)
    m = model(reg.get(model_id).params["name"])
    spec = GridSpec(**grid)
    seeds = teacher.seeds
    params = {"model": m.name, "fingerprint": m.fingerprint, "grid": spec.to_dict(), "teacher_factor": teacher.factor,
              "teacher_solver": teacher.solver, "alignment": "exact", "n_samples": teacher.n_samples,
              "first_seed": teacher.first_seed, "batch_size": teacher.batch_size}
    key = (f"{m.name}/{spec.family}-{spec.steps}/teacher-{teacher.solver}-x{teacher.factor}/"
           f"seeds-{seeds.start}-{seeds.stop - 1}")
    found = reg.find_intact("trajectory", key, **params)
    if found:
        log.info("teacher %s found in the registry (%s)", key, found[0].short)
        return found[0].id
    log.info("computing teacher %s", key)
    plan = student_grid_teacher(m, spec, teacher)
    keep = plan.keep - {0}  # the start state is the seeded noise times sigma_0: recomputed, not stored
    with reg.staging() as area:  # partial files only in the registry's staging area
        path = write_teacher(area.path / TEACHER_FILE, m.denoiser, partial(seeded_noise, shape=m.shape), plan.sigmas,
                             plan.solver, keep=keep, sample_ids=list(seeds), batch_size=teacher.batch_size,
                             meta={"model_fingerprint": m.fingerprint, "teacher_factor": teacher.factor})
        art = reg.publish("trajectory", key, {TEACHER_FILE: path}, params=params, parents=[model_id],
                          provenance=provenance())
    log.info("computed teacher %s -> %s", key, art.short)
    return art.id


def distill(registry: str, model_id: str, grid: dict, solver: str, teacher: TeacherConfig, fit: FitConfig,
            first_step: str = NETWORK, trajectory_id: str | None = None, gaussian_id: str | None = None) -> str:
    """D-ODE lambdas for ``solver`` on a student grid, fitted as ``fit`` says. Exact alignment: to the stored
    states of teacher ``trajectory_id`` (the ``teacher`` step's, for this grid and ``teacher``); official:
    to the reference code's Euler teacher, run here from the teacher's seeds (its grid is the solver's own,
    so nothing is stored, and the lambdas' parent is the model). ``first_step`` analytic or flowmap: the first
    evaluation by the Gaussian of artifact ``gaussian_id``."""
    reg = open_registry(registry)
    m = model(reg.get(model_id).params["name"])
    spec = GridSpec(**grid)
    exact = teacher.alignment == "exact"
    if exact != (trajectory_id is not None):
        raise ValueError("exact alignment fits to a stored teacher (pass its trajectory id); official alignment "
                         "runs its own teacher (pass none)")
    source = reg.get(trajectory_id) if exact else reg.get(model_id)
    if exact and (m.fingerprint != source.params["fingerprint"] or source.params["grid"] != spec.to_dict()):
        raise ValueError(f"teacher {source.short} was computed for another model or grid; rerun the teacher "
                         "(the pipeline does so by itself)")
    gauss = reg.get(gaussian_id) if gaussian_id else None
    first = make_first_step(first_step, load_gaussian(reg, gauss, model=m.fingerprint) if gauss else None)
    n_eval = network_calls(solver, spec.steps, first)
    params = {"model": m.name, "fingerprint": m.fingerprint, "solver": solver, "nfe": n_eval, "grid": spec.to_dict(),
              "teacher": source.id if exact else teacher.model_dump(), "fit": fit.model_dump(),
              **({"first_step": first_step, "gaussian": gauss.id} if first else {}),
              **({"guard_features": m.guard_features} if m.guard_features else {})}
    key = (f"{m.name}/{solver}/nfe{n_eval}/{spec.family}-{spec.steps}" + (f"/first-{first_step}" if first else "")
           + ("" if exact else "/official"))
    found = reg.find_intact("lambdas", key, **params)
    if found:
        log.info("lambdas %s found in the registry (%s)", key, found[0].short)
        return found[0].id
    sigmas, features = spec.sigmas(m.denoiser), guard_features(m.guard_features)
    if exact:
        traj = read_steps(reg.local_path(source, TEACHER_FILE))
        noise = seeded_noise(traj.sample_ids.tolist(), m.shape)
        plan = student_grid_teacher(m, spec, teacher)
        states = {plan.student_index(step): traj.at(step) for step in traj.steps}
        lam = distill_from_states(m.denoiser, noise, sigmas, states, solver, teacher={**plan.record(),
                                  "trajectory": source.id}, fit=fit, features=features, first=first)
    else:
        lam = distill_lambdas(m.denoiser, teacher.noise(m.shape), sigmas, solver, teacher, fit, features=features)
    art = save_lambdas(reg, lam, key, [source.id, *([gauss.id] if gauss else [])], params, provenance=provenance())
    log.info("distilled %s (%s): lambdas %s (guard chose %s) -> %s", key, fit.objective,
             [round(v, 4) for v in lam.values], lam.guard.get("chosen", "off"), art.short)
    return art.id


def distill_pipeline(registry: str, pipeline: str, prompts: list[str], config: PipelineDistillConfig,
                     device: str = "cpu") -> str:
    """D-ODE lambdas for a diffusers text-to-image pipeline (its folder or hub id) over ``prompts``: found in the
    registry by ``dode distill-pipeline``'s key and params (``pipeline_lambdas_key``, ``pipeline_lambdas_params``),
    else the pipeline loaded on ``device``, fitted (``dode.integrations.diffusers.distill.distill_pipeline``) and
    registered as that command registers them."""
    reg = open_registry(registry)
    key, params = pipeline_lambdas_key(pipeline, config), pipeline_lambdas_params(pipeline, config, prompts)
    found = reg.find_intact("lambdas", key, **params)
    if found:
        log.info("lambdas %s found in the registry (%s)", key, found[0].short)
        return found[0].id
    reg.check_writable()  # fail before the distillation, not after
    pipe = load_pipeline(pipeline, str(resolve_device(device)))
    lam = fit_pipeline(pipe, prompts, config)
    art = register_pipeline_lambdas(reg, pipeline, config, prompts, pipe, lam, provenance=provenance())
    log.info("distilled %s over %d prompts: lambdas %s (guard chose %s) -> %s", key, len(prompts),
             [round(v, 4) for v in lam.values], (lam.guard or {}).get("chosen", "off"), art.short)
    return art.id


# Sampling, scoring and the report.
def sample(registry: str, job: dict, shard: int = 0, num_shards: int = 1) -> str:
    """One shard of a sampling job (its chunks, each published when done, found again on a rerun), its
    progress reported to the orchestrator's ``Hooks.progress``."""
    reg = open_registry(registry)
    sampling = SamplingJob.from_dict(job)
    model(sampling.model)  # loaded once per process (run_sampling loads it again, from the OS cache)
    chunks = sampling.shard_chunks(shard, num_shards)
    computed = []
    progress = HOOKS[0].progress(f"sampling shard {shard}/{num_shards} of {sampling.key()}")

    def done(c: int, art: Artifact, now: bool) -> None:
        if now:
            computed.append(c)
        progress(c - chunks.start + 1, len(chunks))

    art = run_sampling(sampling, reg, shard=shard, num_shards=num_shards, on_chunk=done, provenance=provenance())
    log.info("samples %s shard %d/%d: computed %d chunk(s), %d found in the registry -> %s", sampling.key(), shard,
             num_shards, len(computed), len(chunks) - len(computed), art.short)
    return art.id


def gather_samples(registry: str, job: dict) -> str:
    """The whole job's samples artifact (an index over its chunks), once every shard has run."""
    return run_sampling(SamplingJob.from_dict(job), open_registry(registry), provenance=provenance()).id


def reference_stats(registry: str, model_id: str, metric: str, n_samples: int, first_seed: int) -> str:
    """Feature statistics of the model's built-in reference data (``dode.metrics.reference``)."""
    reg = open_registry(registry)
    m = model(reg.get(model_id).params["name"])
    ext = extractor(metric)
    images, source = reference_images(m, n_samples, first_seed)
    params = {"features": ext.name, "fingerprint": ext.fingerprint, "n": len(images), "source": source,
              "model_fingerprint": m.fingerprint, "implementation": implementation(ext.name)}
    key = f"{m.name}/{ext.name}/{source}"
    found = reg.find_intact("reference-stats", key, **params)
    if found:
        return found[0].id
    stats = stats_from_images(images, ext, batch_size=500)
    art = reg.publish("reference-stats", key, {STATS_FILE: stats_to_bytes(stats)}, params={**params, "dims": stats.dims},
                      parents=[model_id], provenance=provenance())
    log.info("reference statistics %s (%d images) -> %s", key, len(images), art.short)
    return art.id


def score(registry: str, samples_id: str, metric: str, reference_id: str) -> str:
    """One metric of a samples artifact (``dode.metrics.scores.score_samples``): a Fréchet distance to
    reference statistics, or the RMSE to the teacher's samples from the same seeds."""
    reg = open_registry(registry)
    samples, ref = reg.get(samples_id), reg.get(reference_id)
    params = {"metric": metric, "samples": samples.id, "reference": ref.id, "sets": SETS}  # scores with a spread
    key = f"{samples.key}/{metric}"
    found = reg.find_intact("score", key, **params)
    if found:
        return found[0].id
    result: dict[str, Any] = {**score_samples(reg, samples, metric, ref), "samples": samples.id, "reference": ref.id}
    art = reg.publish_json("score", key, result, params=params, parents=[samples.id, ref.id], provenance=provenance())
    log.info("%s of %s: %s -> %s", result["label"], samples.key, with_spread(result["value"], result["spread"]),
             art.short)
    return art.id


def report(registry: str, title: str, meta: dict, rows: list[dict], cells: list[dict], teacher_samples: str,
           parents: list[str]) -> str:
    """The sweep's report as a registry artifact (``dode.pipeline.report.render_report``)."""
    return render_report(open_registry(registry), title, meta, rows, cells, teacher_samples, parents,
                         provenance=provenance())


def json_bytes(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()
