"""The metrics a sweep scores samples by, and their values for a samples artifact.

Fréchet distances on an extractor's features (``FEATURES``: metric -> extractor), against reference
statistics, and the RMSE to the teacher's samples drawn from the same seeds (paired by seed):

    RMSE = sqrt(mean_i,j (x_i[j] - x_i^teacher[j])^2)   over samples i and their pixels j (model scale [-1, 1]).

A model declares the Fréchet metrics that suit it (``Model.metrics``); ``auto_metrics`` adds FID where
pytorch-fid's Inception weights are in place, and the RMSE, which suits every model. Every score is the mean
over ``dode.metrics.spread.SETS`` disjoint evaluation sets of the samples (by seed), with their spread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np

from dode.common.images import to_model
from dode.metrics.features import FeatureExtractor, get_extractor, inception_weights_path
from dode.metrics.fid import StreamingMoments, frechet_distance, stats_from_bytes
from dode.metrics.sources import STATS_FILE
from dode.metrics.spread import SETS, split_by_seed, spread
from dode.models import Model
from dode.store.samples import chunk_list, iter_samples, load_samples

FEATURES = {"fd-digits": "digits", "fd-pixels": "pixels", "fid": "inception"}  # Fréchet metric -> extractor
METRICS = (*FEATURES, "rmse")  # rmse: paired, to the teacher's samples from the same seeds


def check_metrics(metrics: Iterable[str]) -> None:
    """One ValueError unless ``metrics`` is ``["auto"]`` or a non-empty list of known metrics."""
    metrics = list(metrics)
    if metrics == ["auto"]:
        return
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"unknown metric(s) {bad}; choose from {list(METRICS)}, or 'auto'")


def auto_metrics(m: Model) -> list[str]:
    """The model's own Fréchet metrics, FID where pytorch-fid's Inception weights are in place, and the RMSE."""
    metrics = list(m.metrics)
    try:
        inception_weights_path()
        metrics.append("fid")
    except FileNotFoundError:
        pass
    return [*metrics, "rmse"]


def resolve_metrics(metrics: Iterable[str], m: Model) -> list[str]:
    """``["auto"]`` -> ``auto_metrics(m)``; anything else checked, duplicates dropped, in order."""
    metrics = list(metrics)
    check_metrics(metrics)
    return auto_metrics(m) if metrics == ["auto"] else list(dict.fromkeys(metrics))


@lru_cache(maxsize=4)
def extractor(metric: str) -> FeatureExtractor:
    """The feature extractor of a Fréchet metric (one per process)."""
    if metric not in FEATURES:
        raise ValueError(f"{metric!r} is not a Fréchet metric; choose one of {list(FEATURES)}")
    return get_extractor(FEATURES[metric])


def rmse(x: np.ndarray, y: np.ndarray) -> float:
    """Root mean square difference of two equally shaped uint8 image batches, on the model scale [-1, 1]."""
    if x.shape != y.shape:
        raise ValueError(f"RMSE compares equally shaped batches, got {x.shape} and {y.shape}")
    return math.sqrt(float((to_model(x) - to_model(y)).square().mean()))


def score_samples(registry: Any, samples: Any, metric: str, reference: Any) -> dict[str, Any]:
    """One metric of a samples artifact: {"metric", "label", "value", "spread", "values", "sets", "n"}: the
    mean over SETS disjoint evaluation sets (``dode.metrics.spread``), their standard deviation, each set's
    value, and the number of samples in all. A Fréchet distance whose sets would hold no more samples than
    feature dimensions (a singular covariance) is measured once on all samples, its spread None. ``reference`` is a "reference-stats" artifact for a Fréchet
    distance, the teacher's samples (same seeds) for the RMSE."""
    if metric == "rmse":
        if samples.params["seeds"] != reference.params["seeds"]:
            raise ValueError(f"RMSE pairs samples by seed: {samples.short} has seeds {samples.params['seeds']}, "
                             f"{reference.short} has {reference.params['seeds']}")
        x, y = load_samples(registry, samples), load_samples(registry, reference)
        seeds = [s for _, seeds in chunk_list(registry, samples) for s in seeds]
        parts = dict(split_by_seed([(seeds, np.arange(len(x)))]))
        if len(parts) < SETS:  # fewer samples than sets: one set, no spread
            return {"metric": metric, "label": "RMSE to teacher", "value": rmse(x, y), "spread": None, "values": [],
                    "sets": 1, "n": len(x)}
        values = [rmse(x[parts[k]], y[parts[k]]) for k in range(SETS)]
        return {"metric": metric, "label": "RMSE to teacher", **spread(values), "sets": SETS, "n": len(x)}
    moments = [StreamingMoments() for _ in range(SETS)]
    for k, images in split_by_seed(iter_samples(registry, samples)):
        for start in range(0, len(images), 500):
            moments[k].add(extractor(metric)(images[start:start + 500]))
    ref, ext = stats_from_bytes(registry.read_bytes(reference, STATS_FILE)), extractor(metric)
    if min(m.n for m in moments) <= ref.dims:  # too few samples per set for a covariance: one set, no spread
        whole = StreamingMoments()
        for m in moments:
            whole.merge(m)
        stats = whole.stats(ext.name, ext.fingerprint)
        return {"metric": metric, "label": stats.label, "value": frechet_distance(stats, ref), "spread": None,
                "values": [], "sets": 1, "n": stats.n}
    stats = [m.stats(ext.name, ext.fingerprint) for m in moments]
    return {"metric": metric, "label": stats[0].label, **spread([frechet_distance(st, ref) for st in stats]),
            "sets": SETS, "n": sum(st.n for st in stats)}

