"""Gaussians (the analytic first step's, ``dode.core.gaussian``) as registry artifacts: one ``gaussian.json``
(``Gaussian.to_dict``) per artifact, fingerprinted to the model like lambdas (param ``model_fingerprint``);
``load_gaussian(..., model=fingerprint)`` refuses a Gaussian of another model unless ``allow_other_model``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from dode.core.gaussian import MAX_GAUSSIAN_JSON_BYTES, Gaussian
from dode.store.registry import Artifact, Registry

GAUSSIAN_FILE = "gaussian.json"


def save_gaussian(reg: Registry, gaussian: Gaussian, key: str, parents: Sequence[str | Artifact] = (),
                  params: Mapping[str, Any] | None = None, *, provenance: Mapping[str, Any] | None = None) -> Artifact:
    """Publish ``gaussian`` as a 'gaussian' artifact; its dimension, rank, fingerprint and model join ``params``."""
    info = {"dim": gaussian.dim, "rank": gaussian.rank, "gaussian_fingerprint": gaussian.fingerprint,
            "model_fingerprint": gaussian.model, **(params or {})}
    files = {GAUSSIAN_FILE: json.dumps(gaussian.to_dict(), sort_keys=True).encode()}
    return reg.publish("gaussian", key, files, params=info, parents=parents, provenance=provenance)


def load_gaussian(reg: Registry, ref: str | Artifact, *, model: str | None = None,
                  allow_other_model: bool = False) -> Gaussian:
    """The Gaussian stored in a 'gaussian' artifact (id, unique id prefix or Artifact), file verified. With
    ``model`` (a fingerprint), a Gaussian of another model is refused unless ``allow_other_model``."""
    art = reg.get(ref)
    if art.kind != "gaussian":
        raise ValueError(f"artifact {art.short} is a {art.kind!r} artifact ({art.key}), not 'gaussian'")
    gaussian = Gaussian.from_dict(reg.read_json(art, GAUSSIAN_FILE, max_bytes=MAX_GAUSSIAN_JSON_BYTES))
    check_params(art, gaussian)
    if model and not allow_other_model and gaussian.model and gaussian.model != model:
        raise ValueError(f"gaussian {art.short} ({art.key}) approximates model {gaussian.model[:16]}, not the model "
                         f"being sampled ({model[:16]}); build one for this model (`dode gaussian`), or pass "
                         "--allow-other-model (allow_other_model=True) to use it anyway")
    return gaussian


def check_params(art: Artifact, gaussian: Gaussian) -> None:
    """One ValueError unless what the artifact's params say (model and Gaussian fingerprints) is what its file
    holds: a file edited after publishing (its ``model`` blanked, say) is refused."""
    said = {"model_fingerprint": gaussian.model, "gaussian_fingerprint": gaussian.fingerprint}
    wrong = [k for k, v in said.items() if k in art.params and art.params[k] != v]
    if wrong:
        raise ValueError(f"gaussian {art.short} ({art.key}): its file disagrees with its params on {wrong}; the "
                         "artifact is forged or corrupt: build a new one with `dode gaussian`")
