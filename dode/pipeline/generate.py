"""Sampling at scale: a SamplingJob cut into seeded chunks, each chunk stored as its own registry artifact.

Sample k of a job is ``sample(D, seeded_noise([first_seed + k]), sigmas, solver, lambdas)`` converted to
uint8 by ``dode.common.images.to_uint8``. Its noise depends on its seed only (``dode.core.rng``), bit for bit. The
sample itself depends on the batch it is computed in only through rounding: BLAS and vectorised kernels
(``cdist``, matmul, ``log``/``exp`` tails) sum and round differently for different batch shapes, and
differently on different CPUs (Intel and AMD), even in float64. What holds by construction is that chunks
are fixed by ``batch_size``: a chunk always holds the same seeds in the same batch shape, so shards,
workers, reruns and fresh registries of one job reproduce the same bits on one machine. Across batch
sizes, float samples agree to rounding (float64: ~1e-12) and uint8 images agree except where a pixel
lies within that rounding of a quantisation tie. Chunk c holds the seeds ``first_seed + c * batch_size``
onwards (one batch, so memory is bounded by the batch). Each chunk is published as soon as it is done, with the hash of
the sampler (model, solver, grid, lambdas) and its seed range in its params, and found again by any later
job with the same sampler and chunk: an interrupted job resumes where it stopped, a longer job reuses a
shorter one's chunks, and ``num_shards`` workers split one job's chunks into contiguous blocks.

A "samples" artifact is either a chunk (file ``images.npy``, uint8 (B, C, H, W), params ``seeds`` =
[start, stop)) or an index over chunks (file ``index.json``; its chunks are also its parents): one per
shard, and one for the whole job once every chunk exists. An index's params hold the job dict; every
samples artifact's parents hold the lambdas and the model artifact, when registered.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from dode.common.config import Int, build
from dode.common.devices import resolve_device
from dode.common.images import to_uint8, write_png
from dode.core.correction import Lambdas
from dode.core.fitted import check_sampler, implied_grid
from dode.core.gaussian import NETWORK, FirstStep
from dode.core.grids import GridSpec
from dode.core.rng import seeded_noise
from dode.core.sampling import sample
from dode.core.types import Denoiser, Tensor
from dode.distillation.config import FIRST_STEP, FirstStepKind, ModelName, SeededBatches, Solver
from dode.models import load_model
from dode.store.gaussians import load_gaussian
from dode.store.lambdas import check_model, load_lambdas
from dode.store.samples import MAX_CHUNKS, SAMPLES_SCHEMA_VERSION, iter_samples

CONVERSION = "uint8 = clip(round((x + 1) * 127.5), 0, 255) of model-space x in [-1, 1]"
ChunkHook = Callable[[int, Any, bool], None]  # (chunk index, chunk artifact, computed now) after each chunk


class SamplingConfig(SeededBatches):
    """Large-batch sampling: ``n_samples`` seeded samples from ``first_seed`` on, in batches (and stored
    chunks) of ``batch_size``, split into ``num_shards`` shards."""

    num_shards: Int = Field(1, ge=1, le=100_000, description="sampling shards per job")


def check_first_step(first_step: str, gaussian: str | None) -> None:
    """The first step and its Gaussian go together: an analytic first step (analytic, flowmap) needs a
    'gaussian' artifact id, and only it takes one."""
    if (first_step == NETWORK) != (gaussian is None):
        raise ValueError("an analytic first step (analytic, flowmap) needs a gaussian artifact id (make one with "
                         "`dode gaussian`), and only it takes one")


JOB_FIELDS = ("model", "solver", "grid", "lambdas_id", "n_samples", "first_seed", "batch_size", "first_step",
              "gaussian_id")


class SamplingJob(SeededBatches):
    """What to sample: the sampling configuration's seeds and batches, with the model, solver, grid
    (``GridSpec.to_dict()``), optional lambdas artifact id and an analytic ``first_step`` with its 'gaussian'
    artifact (``gaussian_id``) for the base solver (lambdas fitted with a first step carry their own: pass
    neither with them). Its fields may also be given positionally, in the order of ``JOB_FIELDS``.

    With lambdas, ``grid`` is None: they imply the grid they were fitted on (learned or not). A grid given
    with them must be that grid (older jobs carried one); any other is refused when the job runs
    (``dode.core.fitted``), never replaced.

    Samples use seeds ``first_seed, ..., first_seed + n_samples - 1``; ``batch_size`` is both the forward
    batch and the chunk size (the unit of storage and of resumption).
    """

    model: ModelName
    solver: Solver
    grid: dict[str, Any] | None
    lambdas_id: str | None = None
    first_step: FirstStepKind = FIRST_STEP
    gaussian_id: str | None = None

    def __init__(self, *args: Any, **fields: Any) -> None:
        if len(args) > len(JOB_FIELDS):
            raise TypeError(f"a SamplingJob takes at most {len(JOB_FIELDS)} positional fields {JOB_FIELDS}")
        super().__init__(**dict(zip(JOB_FIELDS, args)), **fields)

    @field_validator("grid", mode="before")
    @classmethod
    def _grid(cls, grid: Any) -> Any:
        if grid is None:
            return None
        try:
            return GridSpec(**grid).to_dict()
        except TypeError as err:
            raise ValueError(f"grid must be a GridSpec.to_dict(), e.g. {{'family': 'karras', 'steps': 10}}: {err}") from None

    @model_validator(mode="after")
    def _job(self) -> SamplingJob:
        if self.grid is None and self.lambdas_id is None:
            raise ValueError("a job without lambdas needs a grid (GridSpec.to_dict(), e.g. {'family': 'karras', "
                             "'steps': 10}); only lambdas imply theirs")
        check_first_step(self.first_step, self.gaussian_id)
        if self.gaussian_id is not None and self.lambdas_id is not None:
            raise ValueError("lambdas carry the first step they were fitted with: pass no first step or gaussian "
                             "with them")
        if self.num_chunks > MAX_CHUNKS:
            raise ValueError(f"{self.n_samples} samples in chunks of {self.batch_size} make {self.num_chunks} chunks; a "
                             f"job has at most {MAX_CHUNKS}: raise the batch size or split the seeds over several jobs")
        return self

    @property
    def spec(self) -> GridSpec | None:
        return None if self.grid is None else GridSpec(**self.grid)

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump()
        return {name: data[name] for name in JOB_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingJob:
        unknown = sorted(set(data) - set(JOB_FIELDS))
        if unknown:
            raise ValueError(f"unknown sampling job field(s) {unknown}; a job has {list(JOB_FIELDS)}")
        return build(cls, data)

    def sampler(self) -> dict[str, Any]:
        """What maps a seed to a sample: model, solver, grid, lambdas, first step (not how many or in which
        batches); the network's first step adds no keys, so plain samplers hash as before."""
        first = {"first_step": self.first_step, "gaussian_id": self.gaussian_id} if self.gaussian_id else {}
        return {"model": self.model, "solver": self.solver, "grid": self.grid, "lambdas_id": self.lambdas_id, **first}

    def sampler_hash(self) -> str:
        """sha256 (16 hex digits) of ``sampler()``: a stored chunk serves every job with this hash and its seeds."""
        return hashlib.sha256(json.dumps(self.sampler(), sort_keys=True).encode()).hexdigest()[:16]

    def sampler_key(self) -> str:
        lam = self.lambdas_id[:12] if self.lambdas_id else "base"
        lam += f"-{self.first_step}-{self.gaussian_id[:12]}" if self.gaussian_id else ""
        grid = "fitted-grid" if self.spec is None else f"{self.spec.family}-{self.spec.steps}"
        return f"{self.model}/{self.solver}/{grid}/{lam}"

    def key(self) -> str:
        last = self.first_seed + self.n_samples - 1
        return f"{self.sampler_key()}/seeds-{self.first_seed}-{last}/b{self.batch_size}"

    @property
    def num_chunks(self) -> int:
        return -(-self.n_samples // self.batch_size)

    def chunk_seeds(self, c: int) -> range:
        start = self.first_seed + c * self.batch_size
        return range(start, min(start + self.batch_size, self.first_seed + self.n_samples))

    def shard_chunks(self, shard: int, num_shards: int) -> range:
        """The contiguous block of chunk indices that shard ``shard`` of ``num_shards`` computes."""
        if not 1 <= num_shards <= self.num_chunks:
            raise ValueError(
                f"num_shards must be in [1, {self.num_chunks}] (the job has {self.num_chunks} chunks of "
                f"{self.batch_size}); got {num_shards}"
            )
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in [0, {num_shards - 1}] for {num_shards} shards, got {shard}")
        return range(shard * self.num_chunks // num_shards, (shard + 1) * self.num_chunks // num_shards)


def generate_batch(
    denoiser: Denoiser, sigmas: Tensor, solver: str, lambdas: Lambdas | None, seeds: range | list[int],
    shape: tuple[int, ...], device: str | torch.device = "cpu", first: FirstStep | None = None,
) -> Tensor:
    """Model-space samples (float64, CPU) for ``seeds``: seeded noise, then ``dode.sample``."""
    noise = seeded_noise(seeds, shape, device=device)
    return sample(denoiser, noise, sigmas, solver, lambdas, first=first).cpu()


def _npy_bytes(images: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, images, allow_pickle=False)
    return buf.getvalue()


class _Run:
    """One job resolved against a model, its grid, its lambdas and a registry."""

    def __init__(self, job: SamplingJob, registry: Any, device: str | torch.device | None,
                 allow_other_model: bool = False, provenance: Mapping[str, Any] | None = None) -> None:
        self.registry, self.device, self.provenance = registry, resolve_device(device), dict(provenance or {})
        registry.check_writable()  # fail before any sampling, not after the first chunk
        lambdas, parents = None, []
        if job.lambdas_id:
            art = registry.get(job.lambdas_id)
            lambdas, job, parents = load_lambdas(registry, art), job.model_copy(update={"lambdas_id": art.id}), [art.id]
        self.job, self.lambdas = job, lambdas
        self.model = load_model(job.model, device=str(self.device))
        self.sigmas = None if job.spec is None else job.spec.sigmas(self.model.denoiser)
        if lambdas is not None:
            check_model(registry, art, lambdas, self.model.fingerprint, allow_other_model=allow_other_model)
            check_sampler(lambdas, job.solver, lambdas.correction)
            self.sigmas = implied_grid(lambdas, self.sigmas)  # theirs; another grid given with them is refused
        self.first = None
        if job.gaussian_id:
            gauss = registry.get(job.gaussian_id)
            self.first = FirstStep(job.first_step, load_gaussian(registry, gauss, model=self.model.fingerprint,
                                                                 allow_other_model=allow_other_model))
            job, parents = job.model_copy(update={"gaussian_id": gauss.id}), [*parents, gauss.id]
            self.job = job
        parents += [a.id for a in registry.find("model", self.model.name, fingerprint=self.model.fingerprint)[:1]]
        self.parents = parents
        self.base = {"schema_version": SAMPLES_SCHEMA_VERSION, "sampler_hash": job.sampler_hash(),
                     "model_fingerprint": self.model.fingerprint, "shape": list(self.model.shape),
                     "dtype": "uint8", "conversion": CONVERSION}

    def chunk_key(self, seeds: range) -> str:
        return f"{self.job.sampler_key()}/seeds-{seeds.start}-{seeds.stop - 1}"

    def stored_chunks(self) -> dict[int, Any]:
        """Chunk index -> stored chunk artifact holding exactly that chunk's seeds: found by each chunk's key in
        the registry's key index (one listing of every manifest in a registry written before it)."""
        sampler = {"sampler_hash": self.base["sampler_hash"], "model_fingerprint": self.model.fingerprint}
        ranges = {c: self.job.chunk_seeds(c) for c in range(self.job.num_chunks)}
        if self.registry.is_indexed():
            found = [a for r in ranges.values() for a in self.registry.find("samples", self.chunk_key(r), **sampler)]
        else:
            found = self.registry.find("samples", **sampler)
        by_seeds = {tuple(a.params["seeds"]): a for a in reversed(found)  # a damaged chunk is recomputed
                    if "images.npy" in a.files and self.registry.file_problem(a, "images.npy") is None}
        return {c: by_seeds[(r.start, r.stop)] for c, r in ranges.items() if (r.start, r.stop) in by_seeds}

    def make_chunk(self, c: int) -> Any:
        seeds = self.job.chunk_seeds(c)
        x = generate_batch(self.model.denoiser, self.sigmas, self.job.solver, self.lambdas, seeds,
                           self.model.shape, self.device, self.first)
        params = {**self.base, "sampler": self.job.sampler(), "seeds": [seeds.start, seeds.stop]}
        return self.registry.publish("samples", self.chunk_key(seeds), {"images.npy": _npy_bytes(to_uint8(x))},
                                     params=params, parents=self.parents, provenance=self.provenance)

    def publish_index(self, key: str, chunks: list[int], arts: list[Any], **extra: Any) -> Any:
        ranges = [self.job.chunk_seeds(c) for c in chunks]
        seeds = [ranges[0].start, ranges[-1].stop]
        index = {"schema_version": SAMPLES_SCHEMA_VERSION,
                 "chunks": [{"id": a.id, "seeds": [r.start, r.stop]} for r, a in zip(ranges, arts)]}
        params = {**self.base, "job": self.job.to_dict(), "seeds": seeds, "n": seeds[1] - seeds[0], **extra}
        return self.registry.publish("samples", key, {"index.json": json.dumps(index, indent=1).encode()},
                                     params=params, parents=[*self.parents, *(a.id for a in arts)],
                                     provenance=self.provenance)


def run_sampling(
    job: SamplingJob, registry: Any, *, shard: int = 0, num_shards: int = 1, device: str | torch.device | None = None,
    progress: bool = False, on_chunk: ChunkHook | None = None, allow_other_model: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> Any:
    """Compute (or find) this shard's chunks and publish them; return a "samples" artifact.

    Returns the whole job's artifact when every chunk of the job exists after this shard (always so for
    ``num_shards=1``), else this shard's. Chunks already in the registry are not recomputed (unless their file
    fails its check: then they are recomputed and the stored copy repaired). Lambdas fitted on another model
    are refused unless ``allow_other_model``. ``provenance``: who is sampling, recorded in what it publishes.
    """
    from tqdm import tqdm

    chunks = job.shard_chunks(shard, num_shards)
    run = _Run(job, registry, device, allow_other_model, provenance)
    stored, arts = run.stored_chunks(), []
    with tqdm(total=sum(len(job.chunk_seeds(c)) for c in chunks), unit="sample", disable=not progress,
              desc=f"shard {shard}/{num_shards}") as bar:
        for c in chunks:
            art = stored.get(c) or run.make_chunk(c)
            arts.append(art)
            bar.update(len(job.chunk_seeds(c)))
            if on_chunk is not None:
                on_chunk(c, art, c not in stored)
    stored = run.stored_chunks() if num_shards > 1 else dict(zip(chunks, arts))
    if len(stored) == job.num_chunks:
        return run.publish_index(run.job.key(), list(range(job.num_chunks)), [stored[c] for c in range(job.num_chunks)])
    return run.publish_index(f"{run.job.key()}/shard-{shard}-of-{num_shards}", list(chunks), arts,
                             shard=shard, num_shards=num_shards)


def export_png(registry: Any, art_or_id: Any, out_dir: str | Path) -> int:
    """Write every sample as ``<seed>.png`` (zero-padded to 6 digits) into ``out_dir``; returns the count."""
    count = 0
    for seeds, images in iter_samples(registry, art_or_id):
        write_png(images, out_dir, [f"{s:06d}.png" for s in seeds])
        count += len(images)
    return count
