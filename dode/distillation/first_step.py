"""Where the analytic first step's Gaussian comes from: a model's own many-step samples, or data.

``dode.core.gaussian`` owns the math; this module makes the samples. A Gaussian of the model's own samples
approximates what the network predicts at sigma_max (the model's distribution, errors included); one of
the data it was trained on works too (the prototype in beyond.md, round 3, measured both alike).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import torch
from pydantic import Field

from dode.common import progress
from dode.common.bounded import check_size, machine_bytes
from dode.common.config import Count, Int, build
from dode.core.gaussian import FULL_RANK_MAX_DIM, Gaussian, Moments
from dode.core.grids import MAX_STEPS, GridSpec
from dode.core.rng import seeded_noise
from dode.core.sampling import sample
from dode.core.types import Tensor
from dode.distillation.config import FAMILY, Family, ModelName, SeededBatches, Solver
from dode.models import Model

MAX_SAMPLES_HELD = 1_000_000  # model samples a Gaussian is fitted to, at most


class GaussianConfig(SeededBatches):
    """How a Gaussian of a model's own samples is made: ``n_samples`` samples (seeds ``first_seed`` onwards, in
    batches of ``batch_size``) by ``solver`` on a ``steps``-step ``family`` grid, ``rank`` eigenpairs kept."""

    n_samples: Annotated[Int, Field(ge=2, le=MAX_SAMPLES_HELD)] = Field(
        2000, description="model samples to fit to (64-dim digits: 31 per dimension); their moments are "
        "streamed up to 4,096 dimensions, above that the samples are held in memory")
    batch_size: Count = Field(500, description="samples per batch")
    steps: Int = Field(25, ge=1, le=MAX_STEPS, description="grid steps of the sampler of the model samples")
    solver: Solver = Field("dpmpp_2m", description="sampler of the model samples")
    family: Family = Field(FAMILY, description="grid family of the sampler")
    rank: Int | None = Field(None, ge=1, description="eigenpairs kept (default: all up to 4,096 dimensions, else 64)")


class GaussianRun(GaussianConfig):
    """``dode gaussian``: the Gaussian of ``model``, fitted to its own samples (``GaussianConfig``) or to
    ``data``."""

    model: ModelName = Field(description="registered model name or diffusers folder")
    data: str | None = Field(None, description="fit to data instead: a .npy of uint8 images (N, C, H, W) or "
                             "'reference' for the model's built-in reference data (e.g. the bundled digits)")


def from_model(model: Model, config: GaussianConfig | Mapping[str, Any] | None = None) -> Gaussian:
    """The Gaussian of ``config.n_samples`` samples of ``model`` (``GaussianConfig``, or a mapping of its fields;
    default: its defaults), fingerprinted to the model. Up to ``FULL_RANK_MAX_DIM`` dimensions the moments are
    streamed (O(d^2) memory); above, the samples are held, as many as a quarter of this machine's memory allows."""
    c = build(GaussianConfig, config)
    dim = math.prod(model.shape)
    streamed = dim <= FULL_RANK_MAX_DIM
    if not streamed:
        check_size("n_samples", c.n_samples, max(2, machine_bytes() // 4 // (8 * dim)),
                   "samples held in a quarter of this machine's memory")
    sigmas = GridSpec(c.family, c.steps).sigmas(model.denoiser)
    end, moments, parts = c.first_seed + c.n_samples, Moments(model.shape), []
    with progress.bar(c.n_samples, f"gaussian of {model.name}", "sample", lines=True) as bar:
        for s in range(c.first_seed, end, c.batch_size):
            x = sample(model.denoiser, seeded_noise(range(s, min(s + c.batch_size, end)), model.shape), sigmas,
                       c.solver)
            if streamed:
                moments.add(x)
            else:
                parts.append(x)
            bar.update(len(x))
    source = {"from": "model", "model_name": model.name, "n": c.n_samples, "solver": c.solver, "steps": c.steps,
              "family": c.family, "first_seed": c.first_seed}
    if streamed:
        return Gaussian.from_moments(moments, c.rank, model=model.fingerprint, source=source)
    return Gaussian.fit(torch.cat(parts), c.rank, model=model.fingerprint, source=source)


def model_gaussian_key(model_name: str, config: GaussianConfig) -> str:
    """The registry key of the Gaussian of a model's own samples made as ``config`` says (``dode gaussian`` and the
    flows alike)."""
    c = config
    return f"{model_name}/gaussian/model-{c.solver}-{c.family}{c.steps}-n{c.n_samples}-seed{c.first_seed}"


def same_size(config: GaussianConfig) -> dict[str, Any]:
    """The params (``Gaussian.source``'s) that make two Gaussians of a model's samples interchangeable: the
    count and the sampler, whatever their seeds; the flows reuse a stored one that matches (e.g. ``dode
    gaussian``'s) instead of fitting their own."""
    return {"from": "model", "n": config.n_samples, "solver": config.solver, "steps": config.steps,
            "family": config.family}


def from_data(images: Tensor, model: Model, *, rank: int | None = None, source: dict[str, Any] | None = None) -> Gaussian:
    """The Gaussian of data ``images`` (n, *model.shape) in the model's space (e.g. [-1, 1] pixels)."""
    if not isinstance(images, Tensor) or tuple(images.shape[1:]) != tuple(model.shape):
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"data for model {model.name!r} must be (n, {', '.join(map(str, model.shape))}), got {got}")
    return Gaussian.fit(images, rank, model=model.fingerprint, source={"from": "data", **(source or {})})
