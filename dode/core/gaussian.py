"""The analytic first step: a Gaussian approximation of the model's distribution answers the evaluation at
sigma_max in closed form, at no network call.

For x0 ~ N(mu, C) and x = x0 + sigma n the exact denoiser and probability-flow map are
    D(x; sigma) = mu + C (C + sigma^2 I)^-1 (x - mu),
    x(s) = mu + (C + s^2 I)^1/2 (C + sigma^2 I)^-1/2 (x(sigma) - mu).
At high noise a trained denoiser is nearly this linear map (Wang & Vastola, "The hidden linear structure in
score-based models", 2023: "analytical teleportation"), so answering the first evaluation with it costs almost
no accuracy. AMED and EPD use the same trick ("AFS") to save one network call.

C is held as C = V diag(w) V^T + r (I - V V^T): its top-k eigenpairs (V, w) plus an isotropic rest r. With
k = d this is the full covariance (r = 0); for high-dimensional latents memory is (k + 1) d + k + 1 floats
(float64: 8 (k + 1) d bytes; d = 16,384 latents at k = 64 take 8.5 MB).
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dode.core.types import Tensor

GAUSSIAN_SCHEMA_VERSION = 1
FULL_RANK_MAX_DIM = 4096  # up to this many dimensions the covariance is kept whole by default
DEFAULT_RANK = 64  # eigenpairs kept beyond that
MAX_GAUSSIAN_JSON_BYTES = 256 << 20  # a Gaussian's JSON: d = 370,000 dimensions at rank 64
ORTHONORMAL_TOL = 1e-6  # |B^T B z - z| / |z| for a probe z: fitted bases reach 1e-12
NETWORK = "network"  # the first evaluation at sigma_max made by the network (no Gaussian)
FIRST_STEPS: tuple[str, ...] = (NETWORK, "analytic", "flowmap")  # how the first evaluation at sigma_max is made


def _encode(t: Tensor) -> dict[str, Any]:
    """A float64 tensor as JSON: shape and little-endian bytes in base64 (exact, compact)."""
    array = t.detach().to("cpu", torch.float64).contiguous().numpy().astype("<f8")
    return {"shape": list(array.shape), "float64_le": base64.b64encode(array.tobytes()).decode()}


def _decode(data: Any, name: str) -> Tensor:
    """The tensor ``_encode`` wrote; one ValueError naming the field for anything malformed."""
    if not isinstance(data, dict) or set(data) != {"shape", "float64_le"}:
        raise ValueError(f"gaussian field {name!r} must be an object with 'shape' and 'float64_le'")
    shape = data["shape"]
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"gaussian field {name!r}: shape must be a list of non-negative integers, got {shape!r:.80}")
    try:
        raw = base64.b64decode(data["float64_le"], validate=True)
    except (TypeError, ValueError):
        raise ValueError(f"gaussian field {name!r}: float64_le is not base64") from None
    if len(raw) != 8 * math.prod(shape):
        raise ValueError(f"gaussian field {name!r}: {len(raw)} bytes do not hold a float64 array of shape {shape}")
    t = torch.from_numpy(np.frombuffer(raw, dtype="<f8").reshape(shape).copy())
    if not torch.isfinite(t).all():
        raise ValueError(f"gaussian field {name!r} holds NaN or inf")
    return t


def check_orthonormal(basis: Tensor) -> None:
    """One ValueError unless ``basis`` (d, k) has orthonormal columns: unit column norms and B^T B z = z for two
    fixed probes z, in O(d k) (a forged basis, e.g. 3 I, would scale every sample)."""
    b = basis.detach().to(torch.float64)
    if not bool(torch.isfinite(b).all()):
        raise ValueError("a Gaussian's basis holds NaN or inf")
    if b.shape[1] == 0:
        return
    z = torch.randn(b.shape[1], 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    off = max(float((b.square().sum(0) - 1).abs().max()), float(((b.T @ (b @ z) - z).norm(dim=0) / z.norm(dim=0)).max()))
    if off > ORTHONORMAL_TOL:
        raise ValueError(f"a Gaussian's basis must have orthonormal columns (off by {off:.3g}); this Gaussian is "
                         "corrupt: build a new one with `dode gaussian`")


def check_rank(rank: int, d: int) -> int:
    """``rank`` capped at ``d``; one ValueError unless it is a positive integer."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    return min(rank, d)


class Moments:
    """The running mean and scatter sum (x - mean)(x - mean)^T of samples added batch by batch (Chan, Golub &
    LeVeque's pairwise update, 1979): a Gaussian of any number of samples in O(d^2) memory."""

    def __init__(self, shape: tuple[int, ...] | torch.Size) -> None:
        self.shape, self.n = tuple(shape), 0
        d = math.prod(self.shape)
        self.mean = torch.zeros(d, dtype=torch.float64)
        self.scatter = torch.zeros(d, d, dtype=torch.float64)

    def add(self, batch: Tensor) -> Moments:
        """Add a batch (m, *shape): scatter += C_b + delta delta^T n m / (n + m), mean += delta m / (n + m)."""
        x = batch.detach().to("cpu", torch.float64).reshape(len(batch), -1)
        if tuple(batch.shape[1:]) != self.shape:
            raise ValueError(f"samples must be (m, {', '.join(map(str, self.shape))}), got {tuple(batch.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the samples hold NaN or inf; check the model or the data")
        m, mean_b = len(x), x.mean(0)
        centred, delta = x - mean_b, mean_b - self.mean
        self.scatter += centred.T @ centred + torch.outer(delta, delta) * (self.n * m / (self.n + m))
        self.mean += delta * (m / (self.n + m))
        self.n += m
        return self


@dataclass(frozen=True)
class Gaussian:
    """N(mean, C) with C = basis diag(variances) basis^T + rest (I - basis basis^T), in the model's sigma space.

    ``mean``: one sample's shape; ``basis``: (d, k) orthonormal columns; ``variances``: (k,) >= 0; ``rest`` >= 0.
    ``model``: the fingerprint of the model it approximates ("" when unknown); ``source``: how it was made.
    """

    mean: Tensor
    basis: Tensor
    variances: Tensor
    rest: float = 0.0
    model: str = ""
    source: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        d = self.mean.numel()
        if self.basis.ndim != 2 or self.basis.shape[0] != d or self.variances.shape != (self.basis.shape[1],):
            raise ValueError(f"a Gaussian over {d} dimensions needs a (d, k) basis and k variances, got "
                             f"{tuple(self.basis.shape)} and {tuple(self.variances.shape)}")
        if not bool(torch.isfinite(self.variances).all()) or bool((self.variances < 0).any()) \
                or not (math.isfinite(self.rest) and self.rest >= 0):
            raise ValueError("a Gaussian's variances and rest must be finite and non-negative")
        check_orthonormal(self.basis)

    @property
    def dim(self) -> int:
        return self.mean.numel()

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    @classmethod
    def fit(cls, samples: Tensor, rank: int | None = None, *, model: str = "", source: dict | None = None) -> Gaussian:
        """The Gaussian of ``samples`` (n, *shape): their mean and covariance (up to FULL_RANK_MAX_DIM dimensions
        from their ``Moments``, whole unless ``rank``), else its top ``rank`` (DEFAULT_RANK) eigenpairs by a
        randomized SVD; plus the mean remaining variance."""
        if not isinstance(samples, Tensor) or samples.ndim < 2 or len(samples) < 2:
            raise ValueError("a Gaussian needs at least 2 samples of shape (n, *sample_shape)")
        x = samples.detach().to(torch.float64).reshape(len(samples), -1)
        d = x.shape[1]
        if d <= FULL_RANK_MAX_DIM:
            return cls.from_moments(Moments(samples.shape[1:]).add(samples), rank, model=model, source=source)
        if not torch.isfinite(x).all():
            raise ValueError("the samples hold NaN or inf; check the model or the data")
        rank = check_rank(rank if rank is not None else DEFAULT_RANK, d)
        centred = x - x.mean(0)
        _, s, v = torch.svd_lowrank(centred, q=rank + 8, niter=4)
        w, v = (s[:rank].square() / (len(x) - 1)), v[:, :rank]
        total = float(centred.square().sum()) / (len(x) - 1)
        rest = max(0.0, (total - float(w.sum())) / (d - rank)) if rank < d else 0.0
        return cls(x.mean(0).reshape(samples.shape[1:]), v, w, rest, model, source)

    @classmethod
    def from_moments(cls, moments: Moments, rank: int | None = None, *, model: str = "",
                     source: dict | None = None) -> Gaussian:
        """The Gaussian of streamed samples' ``moments``: the covariance's top ``rank`` (default: all) eigenpairs
        plus the mean remaining variance."""
        if moments.n < 2:
            raise ValueError("a Gaussian needs at least 2 samples of shape (n, *sample_shape)")
        d = moments.mean.numel()
        rank = check_rank(rank if rank is not None else d, d)
        cov = moments.scatter / (moments.n - 1)
        w, v = torch.linalg.eigh(cov)
        w, v = w.flip(0).clamp(min=0)[:rank], v.flip(1)[:, :rank]
        rest = max(0.0, (float(cov.trace()) - float(w.sum())) / (d - rank)) if rank < d else 0.0
        return cls(moments.mean.reshape(moments.shape), v, w, rest, model, source)

    def _spectral(self, y: Tensor, f: Callable[[Tensor], Tensor]) -> Tensor:
        """f(C) y for rows y (B, d), f applied to C's eigenvalues (per row when f's values are (B, 1))."""
        basis = self.basis.to(y)
        coords = y @ basis
        inside = (coords * f(self.variances.to(y))) @ basis.T
        return inside + f(torch.full((1,), self.rest, dtype=y.dtype, device=y.device)) * (y - coords @ basis.T)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x] = mu + C (C + sigma^2 I)^-1 (x - mu), for x (B, *shape) and sigma (B,) or scalar."""
        mean = self.mean.to(x).reshape(1, -1)
        s2 = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1).square()
        y = x.reshape(len(x), -1) - mean
        return (mean + self._spectral(y, lambda c: c / (c + s2))).reshape(x.shape)

    __call__ = denoise

    def flow(self, x: Tensor, sigma_from: Tensor, sigma_to: Tensor) -> Tensor:
        """The exact probability-flow map from sigma_from to sigma_to: mu + ((C + s_to^2)/(C + s_from^2))^1/2 (x - mu)."""
        mean = self.mean.to(x).reshape(1, -1)
        a2 = torch.as_tensor(sigma_from, dtype=x.dtype, device=x.device).square()
        b2 = torch.as_tensor(sigma_to, dtype=x.dtype, device=x.device).square()
        y = x.reshape(len(x), -1) - mean
        return (mean + self._spectral(y, lambda c: ((c + b2) / (c + a2)).sqrt())).reshape(x.shape)

    def sample(self, noise: Tensor) -> Tensor:
        """Draws mu + C^1/2 n from unit ``noise`` (B, *shape): exact samples, for tests and references."""
        y = noise.to(torch.float64).reshape(len(noise), -1)
        return (self.mean.reshape(1, -1) + self._spectral(y, lambda c: c.sqrt())).reshape(noise.shape)

    @property
    def fingerprint(self) -> str:
        """sha256 of the parameters (mean, basis, variances, rest)."""
        h = hashlib.sha256()
        for t in (self.mean, self.basis, self.variances, torch.tensor([self.rest])):
            h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": GAUSSIAN_SCHEMA_VERSION, "mean": _encode(self.mean), "basis": _encode(self.basis),
                "variances": _encode(self.variances), "rest": self.rest, "model": self.model,
                "source": dict(self.source or {})}

    @classmethod
    def from_dict(cls, data: Any) -> Gaussian:
        """The Gaussian ``to_dict`` wrote; one ValueError naming the problem for anything malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"a gaussian must be a JSON object, got a {type(data).__name__}")
        if data.get("schema_version") != GAUSSIAN_SCHEMA_VERSION:
            raise ValueError(f"gaussian schema version {data.get('schema_version')!r}, this dode reads "
                             f"[{GAUSSIAN_SCHEMA_VERSION}]; rebuild it with this version of dode")
        expected = {"schema_version", "mean", "basis", "variances", "rest", "model", "source"}
        if set(data) != expected:
            raise ValueError(f"malformed gaussian: unknown fields {sorted(set(data) - expected)}, "
                             f"missing fields {sorted(expected - set(data))}")
        rest, model, source = data["rest"], data["model"], data["source"]
        if isinstance(rest, bool) or not isinstance(rest, (int, float)) or not isinstance(model, str) \
                or not isinstance(source, dict):
            raise ValueError("gaussian fields: 'rest' must be a number, 'model' a string, 'source' an object")
        return cls(_decode(data["mean"], "mean"), _decode(data["basis"], "basis"),
                   _decode(data["variances"], "variances"), float(rest), model, source)


@dataclass(frozen=True)
class FirstStep:
    """How the solver's first evaluation, at sigma_max, is made without the network.

    ``analytic``: D(x; sigma_max) is the Gaussian's closed-form denoiser; the solver (and its history, and
    D-ODE's correction) use it as they would the network's output. ``flowmap``: the state is carried from
    sigma_max to the grid's next sigma by the Gaussian's exact flow map, and the solver starts there.
    Either way a grid of N + 1 steps costs the network calls of N.
    """

    kind: str
    gaussian: Gaussian

    def __post_init__(self) -> None:
        if self.kind not in FIRST_STEPS[1:]:
            raise ValueError(f"unknown first step {self.kind!r}; choose one of {list(FIRST_STEPS)} "
                             "('network' is the plain solver: pass no first step)")
        if not isinstance(self.gaussian, Gaussian):
            raise ValueError("a first step needs a dode.core.gaussian.Gaussian (Gaussian.fit(samples))")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "gaussian": self.gaussian.to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> FirstStep | None:
        """The first step ``to_dict`` wrote, or None for an empty record (the network's first step)."""
        if data in ({}, None):
            return None
        if not isinstance(data, dict) or set(data) != {"kind", "gaussian"}:
            raise ValueError("a first step must be a JSON object with 'kind' and 'gaussian'")
        return cls(data["kind"], Gaussian.from_dict(data["gaussian"]))


def first_step(kind: str, gaussian: Gaussian | None) -> FirstStep | None:
    """``FirstStep(kind, gaussian)``, or None for ``network``; one ValueError when a Gaussian is missing."""
    if kind not in FIRST_STEPS:
        raise ValueError(f"unknown first step {kind!r}; choose one of {list(FIRST_STEPS)}")
    if kind == "network":
        return None
    if gaussian is None:
        raise ValueError(f"first step {kind!r} needs a Gaussian of the model's distribution: build one with "
                         "`dode gaussian` (or dode.core.gaussian.Gaussian.fit) and pass it")
    return FirstStep(kind, gaussian)
