"""Fréchet distances between feature Gaussians: FID exactly as pytorch-fid computes it, FD on other features.

FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))  (Heusel et al., 2017, eq. 6; Dowson & Landau,
1982), evaluated by pytorch-fid's own ``calculate_frechet_distance`` (scipy ``sqrtm``, float64).
Statistics are streamed in float64 (``StreamingMoments``), with the covariance normalised by N - 1 as
``np.cov``. The ``.npz`` format (``mu``, ``sigma``; plus ``n``, ``features``, ``fingerprint``,
``schema_version``) is pytorch-fid's, so its ``--save-stats`` files and ours are interchangeable.
"""

from __future__ import annotations

import io
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

STATS_SCHEMA_VERSION = 1
MAX_STATS_DIMS = 16384  # a 2 GiB float64 covariance; Inception pool3 has 2048 dims
MAX_TAG_CHARS = 256  # the longest ``features`` / ``fingerprint`` string a statistics file may hold


class FeatureExtractor(Protocol):
    """What ``stats_from_images`` feeds: the extractors of ``dode.metrics.features`` satisfy it."""

    name: str  # e.g. "inception-2048", "digits", "pixels"
    label: str  # "FID" for Inception, "FD-<name>" otherwise
    fingerprint: str  # sha256 of the weights ("" when there are none)

    def __call__(self, images: np.ndarray) -> np.ndarray: ...  # uint8 (B, C, H, W) -> float64 (B, D)


class UnreliableEstimateWarning(UserWarning):
    """Fewer samples than feature dimensions: the covariance is singular and the distance is biased."""


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a feature set. ``n`` = 0, ``features`` = "" when unknown (a foreign .npz)."""

    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64, normalised by n - 1
    n: int = 0
    features: str = ""  # extractor name, e.g. "inception-2048", "digits", "pixels"
    fingerprint: str = ""  # the extractor's weights sha256

    def __post_init__(self) -> None:
        object.__setattr__(self, "mu", np.asarray(self.mu, np.float64))
        object.__setattr__(self, "sigma", np.asarray(self.sigma, np.float64))
        d = self.mu.shape[0] if self.mu.ndim == 1 else -1
        if d < 1 or self.sigma.shape != (d, d):
            raise ValueError(
                f"statistics need mu of shape (D,) and sigma of shape (D, D), got {self.mu.shape} and "
                f"{self.sigma.shape}; recompute them with `dode fid --save-stats`"
            )
        if not (np.isfinite(self.mu).all() and np.isfinite(self.sigma).all()):
            raise ValueError("statistics hold NaN or infinite values in mu or sigma; recompute them")
        if self.n < 0:
            raise ValueError(f"statistics need n >= 0 samples (0: unknown), got {self.n}")

    @property
    def dims(self) -> int:
        return len(self.mu)

    @property
    def label(self) -> str:
        """How a distance on these features is reported: "FID" for Inception, "FD-<features>" otherwise."""
        return "FID" if self.features in ("", *(f"inception-{d}" for d in (64, 192, 768, 2048))) else f"FD-{self.features}"


class StreamingMoments:
    """Float64 running mean and scatter of features, one batch at a time (memory O(D^2), not O(N D)).

    Mathematically the sums of x and x x^T; each batch is centred on its own mean and merged with the
    pairwise update of Chan, Golub & LeVeque (1979), M = M_a + M_b + d d^T n_a n_b / n with d = mean_b - mean_a,
    which keeps float64 accuracy when the features have a large mean. cov = M / (n - 1), as ``np.cov``.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None

    def add(self, features: np.ndarray) -> StreamingMoments:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"features must be a non-empty (batch, dims) array, got shape {x.shape}")
        if x.shape[1] > MAX_STATS_DIMS:
            raise ValueError(
                f"{x.shape[1]} feature dims need a {x.shape[1]}^2 covariance; Fréchet distances here take at most "
                f"{MAX_STATS_DIMS} dims: use Inception or digits features, or smaller images for pixel features"
            )
        mean = x.mean(0)
        xc = x - mean
        return self._merge(len(x), mean, xc.T @ xc)

    def merge(self, other: StreamingMoments) -> StreamingMoments:
        """Fold another accumulator in (e.g. from another shard)."""
        return self if other.n == 0 else self._merge(other.n, other.mean, other.scatter)

    def _merge(self, n_b: int, mean_b: np.ndarray, scatter_b: np.ndarray) -> StreamingMoments:
        if self.n == 0:
            self.n, self.mean, self.scatter = n_b, mean_b.copy(), scatter_b.copy()
            return self
        if mean_b.shape != self.mean.shape:
            raise ValueError(f"feature dims changed from {self.mean.shape[0]} to {mean_b.shape[0]}")
        n = self.n + n_b
        delta = mean_b - self.mean
        self.scatter += scatter_b + np.outer(delta, delta) * (self.n * n_b / n)
        self.mean += delta * (n_b / n)
        self.n = n
        return self

    def stats(self, features: str = "", fingerprint: str = "") -> FeatureStats:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        return FeatureStats(self.mean.copy(), self.scatter / (self.n - 1), self.n, features, fingerprint)


def stats_from_images(
    images: np.ndarray | Iterable[np.ndarray], extractor: FeatureExtractor, *, batch_size: int = 50
) -> FeatureStats:
    """Feature statistics of uint8 images (B, C, H, W), one array or an iterable of arrays (e.g. chunks),
    fed to the extractor at most ``batch_size`` images at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    moments = StreamingMoments()
    for array in [images] if isinstance(images, np.ndarray) else images:
        for start in range(0, len(array), batch_size):
            moments.add(extractor(array[start : start + batch_size]))
    return moments.stats(extractor.name, extractor.fingerprint)


def check_comparable(a: FeatureStats, b: FeatureStats) -> None:
    """One ValueError unless a and b come from the same features; a warning when either has n < dims."""
    if a.dims != b.dims:
        raise ValueError(
            f"statistics have {a.dims} and {b.dims} feature dims; use the same --dims for Inception features, "
            "and images of one size and channel count for pixel features"
        )
    if a.features and b.features and a.features != b.features:
        raise ValueError(f"statistics of {a.features!r} and {b.features!r} features are not comparable")
    if a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
        raise ValueError(
            f"statistics from different {a.features or 'extractor'} weights ({a.fingerprint[:12]} vs "
            f"{b.fingerprint[:12]}) are not comparable; recompute one side with the other's weights"
        )
    for s in (a, b):
        if 0 < s.n < s.dims:
            warnings.warn(
                f"{s.label} statistics from {s.n} samples < {s.dims} feature dims: the covariance is singular "
                f"and the estimate is unreliable; use at least {s.dims} samples",
                UnreliableEstimateWarning,
                stacklevel=3,
            )


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) by ``pytorch_fid.fid_score.calculate_frechet_distance``."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    check_comparable(a, b)
    try:
        value = float(calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma))
    except TypeError as err:
        if "disp" not in str(err):
            raise
        import scipy

        raise RuntimeError(
            f"pytorch-fid's Fréchet distance calls scipy.linalg.sqrtm(disp=False), which scipy {scipy.__version__} "
            "no longer has; install a scipy it supports: pip install 'scipy>=1.13,<1.18'"
        ) from err
    if not np.isfinite(value):
        raise ValueError(f"the Fréchet distance came out {value}; check both statistics (is sigma a covariance?)")
    return value


def stats_to_bytes(stats: FeatureStats) -> bytes:
    """The .npz bytes: pytorch-fid's ``mu`` and ``sigma`` plus our metadata keys (which pytorch-fid ignores)."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n), features=np.str_(stats.features),
        fingerprint=np.str_(stats.fingerprint), schema_version=np.int64(STATS_SCHEMA_VERSION),
    )
    return buf.getvalue()


def _npz_layout(zf: zipfile.ZipFile, source: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's shape and dtype, from the .npy headers of the zip members only (nothing is loaded)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    layout = {}
    for name in zf.namelist():
        with zf.open(name) as fh:
            version = np.lib.format.read_magic(fh)
            if version not in readers:
                raise ValueError(f"{source}: {name} has .npy format version {version}; save it with numpy's np.savez")
            shape, _, dtype = readers[version](fh)
        layout[name.removesuffix(".npy")] = (shape, dtype)
    return layout


def _check_layout(layout: dict[str, tuple[tuple[int, ...], np.dtype]], source: str) -> None:
    """One ValueError unless ``layout`` is a statistics file of at most MAX_STATS_DIMS dims, small metadata."""
    if "mu" not in layout or "sigma" not in layout:
        raise ValueError(f"{source} has no 'mu' and 'sigma' arrays; write it with `dode fid --save-stats`")
    (mu_shape, mu_dtype), (sigma_shape, sigma_dtype) = layout["mu"], layout["sigma"]
    if len(mu_shape) != 1 or sigma_shape != (mu_shape[0], mu_shape[0]) or mu_shape[0] < 1:
        raise ValueError(f"{source}: mu has shape {mu_shape} and sigma {sigma_shape}; statistics need (D,) and (D, D)")
    if mu_dtype.kind not in "fiu" or sigma_dtype.kind not in "fiu":
        raise ValueError(f"{source}: mu and sigma must be real numbers, got {mu_dtype} and {sigma_dtype}")
    if mu_shape[0] > MAX_STATS_DIMS:
        raise ValueError(f"{source} declares {mu_shape[0]}-d statistics; Fréchet distances here take at most "
                         f"{MAX_STATS_DIMS} dims")
    for key, kinds in (("n", "iu"), ("schema_version", "iu"), ("features", "U"), ("fingerprint", "U")):
        shape, dtype = layout.get(key, ((), np.dtype("U1" if kinds == "U" else "i8")))
        if shape != () or dtype.kind not in kinds or dtype.itemsize > 4 * MAX_TAG_CHARS:
            raise ValueError(f"{source}: {key!r} must be a single {'string' if kinds == 'U' else 'integer'}")


def inception_dims(features: str) -> int | None:
    """The dims a features tag fixes before any image is read: Inception's ("inception-<dims>"); else None."""
    return int(features.removeprefix("inception-")) if features.startswith("inception-") else None


def _check_meta(meta: dict, dims: int, source: str, expected: str) -> None:
    """One ValueError when the file's schema version, features tag or dims (for ``expected``) do not fit."""
    version = meta.get("schema_version", STATS_SCHEMA_VERSION)
    if version != STATS_SCHEMA_VERSION:
        raise ValueError(f"{source}: stats schema_version {version}, this dode reads {STATS_SCHEMA_VERSION}")
    if expected and meta.get("features") and meta["features"] != expected:
        raise ValueError(f"{source} holds statistics of {meta['features']!r} features, not {expected!r}; "
                         "pass the matching --features / --dims")
    if inception_dims(expected) not in (None, dims):
        raise ValueError(f"{source} holds {dims}-d statistics, not the {inception_dims(expected)} dims of "
                         f"{expected!r}; pass the matching --dims")


def read_stats(file: io.IOBase, source: str = "statistics", *, expected: str = "") -> FeatureStats:
    """Statistics from a .npz file object. The .npy headers and the metadata (features tag ``expected``, when
    given) are checked before mu and sigma are read, so a file declaring a huge covariance allocates nothing."""
    try:
        with zipfile.ZipFile(file) as zf:
            layout = _npz_layout(zf, source)
        _check_layout(layout, source)
        file.seek(0)
        with np.load(file, allow_pickle=False) as f:
            meta = {k: f[k].item() for k in ("n", "features", "fingerprint", "schema_version") if k in f}
            _check_meta(meta, layout["mu"][0][0], source, expected)
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise ValueError(f"{source} is not a readable .npz file ({err}); write it with `dode fid --save-stats`") from None
    try:
        return FeatureStats(mu, sigma, int(meta.get("n", 0)), str(meta.get("features", "")),
                            str(meta.get("fingerprint", "")))
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def stats_from_bytes(data: bytes, source: str = "statistics", *, expected: str = "") -> FeatureStats:
    return read_stats(io.BytesIO(data), source, expected=expected)


def save_stats_npz(stats: FeatureStats, path: str | Path) -> Path:
    """Write a pytorch-fid-compatible .npz; refuses to overwrite an existing file (as pytorch-fid)."""
    path = check_stats_path(path)
    path.write_bytes(stats_to_bytes(stats))
    return path


def check_stats_path(path: str | Path) -> Path:
    """``path`` as a new .npz in an existing folder, or one ValueError (checked before statistics are computed)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"statistics files end in .npz (pytorch-fid recognises them by that), got {path}")
    if path.exists():
        raise ValueError(f"{path} already exists; choose another name or delete it first")
    if not path.parent.is_dir():
        raise ValueError(f"no folder {path.parent} to write {path.name} into; create it first")
    return path


def load_stats(path: str | Path, *, expected: str = "") -> FeatureStats:
    """Statistics from a .npz written by ``save_stats_npz`` or by ``python -m pytorch_fid --save-stats``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no statistics file at {path}")
    with open(path, "rb") as file:
        return read_stats(file, str(path), expected=expected)
