"""The flows' steps as plain functions (no Prefect): find the artifact in the registry, else load -> library
call -> publish; return its id. ``flows.tasks`` wraps each in a Prefect task; ``bench/`` calls them in a
plain loop to measure what the orchestration costs.

Every step takes the registry URI, input artifact ids and small JSON configs (and the run's provenance,
recorded in the manifest), and returns an artifact id. Progress goes to the ``dode.flows`` logger (shipped
to the Prefect run logs under a flow run).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import dode
from dode.distill_stored import distill_from_states
from dode.first_step import from_model
from dode.gaussian import first_step as make_first_step
from dode.generate import SamplingJob, run_sampling
from dode.grids import GridSpec
from dode.metrics.fid import stats_from_images, stats_to_bytes
from dode.metrics.guard_features import guard_features
from dode.metrics.reference import reference_images
from dode.metrics.scores import extractor, score_samples
from dode.metrics.sources import STATS_FILE, implementation
from dode.models import Model, load_model
from dode.rng import seeded_noise
from dode.sampling import network_calls
from dode.store.gaussians import load_gaussian, save_gaussian
from dode.store.lambdas import save_lambdas
from dode.store.location import registry_location
from dode.store.registry import Artifact, Registry
from dode.store.trajectory import read_steps
from dode.teacher import TeacherSpec
from dode.teacher_parquet import write_teacher

log = logging.getLogger("dode.flows")
TEACHER_FILE = "teacher.parquet"


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


def register_model(registry: str, name: str, *, provenance: dict | None = None) -> str:
    """The model as a "model" artifact (its diffusers folder, or a JSON description of an in-memory model):
    the root of every lineage."""
    reg, m = open_registry(registry), model(name)
    found = reg.find_intact("model", fingerprint=m.fingerprint)
    if found:
        return found[0].id
    info = {"name": m.name, "fingerprint": m.fingerprint, "shape": list(m.shape), "type": type(m.denoiser).__name__}
    files = {"model": m.folder} if m.folder is not None else {"model.json": json_bytes(info)}
    art = reg.publish("model", m.name, files, params=info,
                      provenance={**(provenance or {}), "model": {"name": m.name, "fingerprint": m.fingerprint}})
    log.info("registered model %s as %s", name, art.short)
    return art.id


def gaussian(registry: str, model_id: str, n_samples: int, first_seed: int, batch_size: int, *,
             provenance: dict | None = None) -> str:
    """The analytic first step's Gaussian of the model, fitted to ``n_samples`` of its own many-step samples
    (``dode.first_step.from_model``), as a "gaussian" artifact."""
    reg = open_registry(registry)
    m = model(reg.get(model_id).params["name"])
    params = {"model": m.name, "model_fingerprint": m.fingerprint, "n": n_samples, "first_seed": first_seed}
    key = f"{m.name}/gaussian/model-samples-n{n_samples}-seed{first_seed}"
    found = reg.find_intact("gaussian", key, **params)
    if found:
        return found[0].id
    art = save_gaussian(reg, from_model(m, n_samples, first_seed=first_seed, batch_size=batch_size), key, [model_id],
                        params, provenance=provenance)
    log.info("gaussian of %s (%d model samples) -> %s", m.name, n_samples, art.short)
    return art.id


# Teacher and distillation: one stored teacher per student grid (``dode.teacher``), one fit per solver on it.
def student_grid_teacher(m: Model, spec: GridSpec, teacher_factor: int, teacher_solver: str):
    """The exact-alignment teacher plan of a student grid, keeping its state at every student grid point."""
    plan = TeacherSpec(teacher_solver, teacher_factor, "exact").plan(spec.sigmas(m.denoiser), teacher_solver)
    return plan.on_student_grid()


def teacher(registry: str, model_id: str, grid: dict, teacher_factor: int, teacher_solver: str, n_samples: int,
            first_seed: int, batch_size: int, *, provenance: dict | None = None) -> str:
    """The teacher on the ``teacher_factor``-fold refinement of a student grid, from seeded noise; only its
    states on the student grid are stored (a "trajectory" artifact). Every solver on that grid reuses it."""
    reg = open_registry(registry)
    m = model(reg.get(model_id).params["name"])
    spec = GridSpec(**grid)
    params = {"model": m.name, "fingerprint": m.fingerprint, "grid": spec.to_dict(), "teacher_factor": teacher_factor,
              "teacher_solver": teacher_solver, "alignment": "exact", "n_samples": n_samples,
              "first_seed": first_seed, "batch_size": batch_size}
    seeds = range(first_seed, first_seed + n_samples)
    key = (f"{m.name}/{spec.family}-{spec.steps}/teacher-{teacher_solver}-x{teacher_factor}/"
           f"seeds-{seeds.start}-{seeds.stop - 1}")
    found = reg.find_intact("trajectory", key, **params)
    if found:
        log.info("teacher %s found in the registry (%s)", key, found[0].short)
        return found[0].id
    log.info("computing teacher %s", key)
    plan = student_grid_teacher(m, spec, teacher_factor, teacher_solver)
    keep = plan.keep - {0}  # the start state is the seeded noise times sigma_0: recomputed, not stored
    with reg.staging() as area:  # partial files only in the registry's staging area
        path = write_teacher(area.path / TEACHER_FILE, m.denoiser, partial(seeded_noise, shape=m.shape), plan.sigmas,
                             plan.solver, keep=keep, sample_ids=list(seeds), batch_size=batch_size,
                             meta={"model_fingerprint": m.fingerprint, "teacher_factor": teacher_factor})
        art = reg.publish("trajectory", key, {TEACHER_FILE: path}, params=params, parents=[model_id],
                          provenance=provenance)
    log.info("computed teacher %s -> %s", key, art.short)
    return art.id


def distill(registry: str, trajectory_id: str, solver: str, guard: bool, holdout: float, correction: str,
            objective: str = "step", objective_options: dict | None = None, alignment: str = "exact",
            first_step: str = "network", gaussian_id: str | None = None, *, provenance: dict | None = None) -> str:
    """D-ODE lambdas for ``solver`` on the teacher's student grid, fitted to its stored states by ``objective``
    (a ``dode.objectives`` entry) with ``objective_options``; with ``official`` alignment, to the reference
    code's Euler teacher, run here from the same seeds (its grid is the solver's own, so it is not stored).
    ``first_step`` analytic or flowmap: the first evaluation by the Gaussian of artifact ``gaussian_id``."""
    reg = open_registry(registry)
    traj_art = reg.get(trajectory_id)
    p = traj_art.params
    m = model(p["model"])
    if m.fingerprint != p["fingerprint"]:
        raise ValueError(f"model {m.name!r} changed since teacher {traj_art.short} was computed; "
                         "rerun the teacher (the pipeline does so by itself)")
    spec, factor = GridSpec(**p["grid"]), p["teacher_factor"]
    gauss = reg.get(gaussian_id) if gaussian_id else None
    first = make_first_step(first_step, load_gaussian(reg, gauss, model=m.fingerprint) if gauss else None)
    n_eval = network_calls(solver, spec.steps, first)
    params = {"model": m.name, "fingerprint": m.fingerprint, "solver": solver, "nfe": n_eval, "grid": spec.to_dict(),
              "teacher": traj_art.id, "guard": guard, "holdout": holdout, "correction": correction,
              "objective": objective, "objective_options": dict(objective_options or {}), "alignment": alignment,
              **({"first_step": first_step, "gaussian": gauss.id} if first else {}),
              **({"guard_features": m.guard_features} if m.guard_features else {})}
    key = f"{m.name}/{solver}/nfe{n_eval}/{spec.family}-{spec.steps}" + (f"/first-{first_step}" if first else "")
    found = reg.find_intact("lambdas", key, **params)
    if found:
        log.info("lambdas %s found in the registry (%s)", key, found[0].short)
        return found[0].id
    sigmas = spec.sigmas(m.denoiser)
    fit = {"guard": guard, "holdout": holdout, "correction": correction, "objective": objective,
           "objective_options": objective_options, "features": guard_features(m.guard_features)}
    if alignment == "official":  # the trajectory's seeds only: its stored states are not the targets
        seeds = range(p["first_seed"], p["first_seed"] + p["n_samples"])
        lam = dode.distill(m.denoiser, seeded_noise(list(seeds), m.shape), sigmas, solver, factor, alignment, **fit,
                           first=first)
    else:
        traj = read_steps(reg.local_path(traj_art, TEACHER_FILE))
        noise = seeded_noise(traj.sample_ids.tolist(), m.shape)
        plan = student_grid_teacher(m, spec, factor, p["teacher_solver"])
        states = {plan.student_index(step): traj.at(step) for step in traj.steps}
        lam = distill_from_states(m.denoiser, noise, sigmas, states, solver,
                                  teacher={**plan.record(), "trajectory": traj_art.id}, **fit, first=first)
    art = save_lambdas(reg, lam, key, [traj_art.id, *([gauss.id] if gauss else [])], params, provenance=provenance)
    log.info("distilled %s (%s): lambdas %s (guard chose %s) -> %s", key, objective, [round(v, 4) for v in lam.values],
             lam.guard.get("chosen", "off"), art.short)
    return art.id


# Sampling and scoring.
def sample(registry: str, job: dict, shard: int = 0, num_shards: int = 1, *,
           on_chunk: Callable[[int, int], None] | None = None) -> str:
    """One shard of a sampling job (its chunks, each published when done, found again on a rerun).
    ``on_chunk(done, total)`` follows its progress."""
    reg = open_registry(registry)
    sampling = SamplingJob.from_dict(job)
    model(sampling.model)  # loaded once per process (run_sampling loads it again, from the OS cache)
    chunks = sampling.shard_chunks(shard, num_shards)
    stored = {a.id for a in reg.find("samples", sampler_hash=sampling.sampler_hash())}
    computed = []

    def done(c: int, art: Artifact) -> None:
        if art.id not in stored:
            computed.append(c)
        if on_chunk is not None:
            on_chunk(c - chunks.start + 1, len(chunks))

    art = run_sampling(sampling, reg, shard=shard, num_shards=num_shards, on_chunk=done)
    log.info("samples %s shard %d/%d: computed %d chunk(s), %d found in the registry -> %s", sampling.key(), shard,
             num_shards, len(computed), len(chunks) - len(computed), art.short)
    return art.id


def gather_samples(registry: str, job: dict) -> str:
    """The whole job's samples artifact (an index over its chunks), once every shard has run."""
    return run_sampling(SamplingJob.from_dict(job), open_registry(registry)).id


def reference_stats(registry: str, model_id: str, metric: str, n_samples: int, first_seed: int, *,
                    provenance: dict | None = None) -> str:
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
                      parents=[model_id], provenance=provenance)
    log.info("reference statistics %s (%d images) -> %s", key, len(images), art.short)
    return art.id


def score(registry: str, samples_id: str, metric: str, reference_id: str, *, provenance: dict | None = None) -> str:
    """One metric of a samples artifact (``dode.metrics.scores.score_samples``): a Fréchet distance to
    reference statistics, or the RMSE to the teacher's samples from the same seeds."""
    reg = open_registry(registry)
    samples, ref = reg.get(samples_id), reg.get(reference_id)
    params = {"metric": metric, "samples": samples.id, "reference": ref.id}
    key = f"{samples.key}/{metric}"
    found = reg.find_intact("score", key, **params)
    if found:
        return found[0].id
    result: dict[str, Any] = {**score_samples(reg, samples, metric, ref), "samples": samples.id, "reference": ref.id}
    art = reg.publish_json("score", key, result, params=params, parents=[samples.id, ref.id], provenance=provenance)
    log.info("%s of %s: %.6g -> %s", result["label"], samples.key, result["value"], art.short)
    return art.id


def json_bytes(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()
