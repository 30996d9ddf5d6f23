"""Where feature statistics come from: an image folder, a pytorch-fid .npz, or a registry artifact.

Registry artifacts are "samples" (their images are streamed chunk by chunk) or "reference-stats" (file
``stats.npz`` in the format of ``dode.metrics.fid``, params naming the features and the implementation).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from dode.common.images import iter_folder
from dode.metrics.features import FeatureExtractor
from dode.metrics.fid import FeatureStats, load_stats, stats_from_bytes, stats_from_images, stats_to_bytes

STATS_FILE = "stats.npz"


def expected_features(name: str, dims: int) -> str:
    """The ``FeatureStats.features`` tag an extractor writes: "inception-<dims>", "digits" or "pixels"."""
    return f"inception-{dims}" if name == "inception" else name


def implementation(features: str) -> str:
    """What computed statistics of ``features``: recorded with every reference-stats artifact."""
    if features.startswith("inception"):
        return f"pytorch-fid {version('pytorch-fid')} InceptionV3 (bilinear resize to 299x299 inside the model)"
    return f"dode {features} features, Fréchet distance by pytorch-fid {version('pytorch-fid')}"


def stats_of_source(
    source: str, extractor: Callable[[], FeatureExtractor], *, registry: Callable[[], Any], batch_size: int = 50,
    expected: str = "",
) -> FeatureStats:
    """Statistics of ``source``: a .npz file, an image folder or a registry artifact id (or unique prefix).

    ``extractor`` and ``registry`` are factories, called only when needed (a .npz needs neither).
    ``expected`` (a features tag) makes statistics of other features one clear error.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if source.endswith(".npz"):
        return load_stats(source, expected=expected)
    if Path(source).is_dir():
        return stats_from_images(iter_folder(source, batch_size), extractor(), batch_size=batch_size)
    if Path(source).exists():
        raise ValueError(f"{source} is a file, not an image folder or a .npz of statistics; pass the folder holding it")
    return stats_of_artifact(registry(), source, extractor, batch_size, expected)


def stats_of_artifact(
    registry: Any, art_id: str, extractor: Callable[[], FeatureExtractor], batch_size: int = 50,
    expected: str = "",
) -> FeatureStats:
    from dode.store.samples import iter_samples

    try:
        art = registry.get(art_id)
    except ValueError as err:
        raise ValueError(f"{art_id!r} is not an image folder, a .npz file or a registry artifact: {err}") from err
    if art.kind == "reference-stats":
        return stats_from_bytes(registry.read_bytes(art, STATS_FILE), f"artifact {art.id[:12]}",
                                expected=expected)
    if art.kind == "samples":
        batches = (images for _, images in iter_samples(registry, art))
        return stats_from_images(batches, extractor(), batch_size=batch_size)
    raise ValueError(f"artifact {art.id[:12]} is a {art.kind!r} artifact; FID reads 'samples' or 'reference-stats'")


def publish_reference_stats(registry: Any, key: str, stats: FeatureStats, source: str) -> Any:
    """Register ``stats`` as a "reference-stats" artifact; a samples artifact source becomes its parent."""
    parents = []
    if not source.endswith(".npz") and not Path(source).is_dir():
        parents = [registry.get(source).id]
    params = {"features": stats.features, "fingerprint": stats.fingerprint, "n": stats.n, "dims": stats.dims,
              "implementation": implementation(stats.features), "source": source if not parents else parents[0]}
    return registry.publish("reference-stats", key, {STATS_FILE: stats_to_bytes(stats)}, params=params,
                            parents=parents)
