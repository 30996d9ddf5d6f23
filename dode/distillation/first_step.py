"""Where the analytic first step's Gaussian comes from: a model's own many-step samples, or data.

``dode.core.gaussian`` owns the math; this module makes the samples. A Gaussian of the model's own samples
approximates what the network predicts at sigma_max (the model's distribution, errors included); one of
the data it was trained on works too (the prototype in beyond.md, round 3, measured both alike).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dode.common import progress
from dode.common.bounded import check_size, machine_bytes
from dode.common.config import MAX_SAMPLES
from dode.core.gaussian import FULL_RANK_MAX_DIM, Gaussian, Moments
from dode.core.grids import GridSpec
from dode.core.rng import seeded_noise
from dode.core.sampling import sample
from dode.core.types import Tensor
from dode.models import Model

SAMPLES = 2000  # model samples a Gaussian is fitted to by default (64-dim digits: 31 samples per dimension)
STEPS = 25  # grid steps of the sampler that makes them
SOLVER = "dpmpp_2m"


def from_model(model: Model, n: int = SAMPLES, *, steps: int = STEPS, solver: str = SOLVER, first_seed: int = 0,
               batch_size: int = 500, rank: int | None = None, family: str = "karras") -> Gaussian:
    """The Gaussian of ``n`` samples of ``model`` (seeds ``first_seed`` onwards, ``solver`` on a ``steps``-step
    ``family`` grid, in batches of ``batch_size``), fingerprinted to the model."""
    for name, value, low in (("n", n, 2), ("steps", steps, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    dim = math.prod(model.shape)
    streamed = dim <= FULL_RANK_MAX_DIM  # moments in O(d^2) memory; above, the samples themselves
    bound = MAX_SAMPLES if streamed else max(2, min(MAX_SAMPLES, machine_bytes() // 4 // (8 * dim)))
    check_size("n", n, bound, "samples held in a quarter of this machine's memory" if not streamed else
               "dode's bound on samples")
    sigmas = GridSpec(family, steps).sigmas(model.denoiser)
    moments, parts = Moments(model.shape), []
    with progress.bar(n, f"gaussian of {model.name}", "sample", lines=True) as bar:
        for s in range(first_seed, first_seed + n, batch_size):
            x = sample(model.denoiser, seeded_noise(range(s, min(s + batch_size, first_seed + n)), model.shape),
                       sigmas, solver)
            if streamed:
                moments.add(x)
            else:
                parts.append(x)
            bar.update(len(x))
    source = {"from": "model", "model_name": model.name, "n": n, "solver": solver, "steps": steps, "family": family,
              "first_seed": first_seed}
    if streamed:
        return Gaussian.from_moments(moments, rank, model=model.fingerprint, source=source)
    return Gaussian.fit(torch.cat(parts), rank, model=model.fingerprint, source=source)


def from_data(images: Tensor, model: Model, *, rank: int | None = None, source: dict[str, Any] | None = None) -> Gaussian:
    """The Gaussian of data ``images`` (n, *model.shape) in the model's space (e.g. [-1, 1] pixels)."""
    if not isinstance(images, Tensor) or tuple(images.shape[1:]) != tuple(model.shape):
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"data for model {model.name!r} must be (n, {', '.join(map(str, model.shape))}), got {got}")
    return Gaussian.fit(images, rank, model=model.fingerprint, source={"from": "data", **(source or {})})
