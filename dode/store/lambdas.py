"""Lambdas on disk: the ``lambdas.json`` format (its schema versions; this module owns it) and the registry
artifact that holds one (``save_lambdas``, ``load_lambdas``).

The JSON object is ``Lambdas``' fields plus ``schema_version``: version 2 added objective, options, fit and
model; version 3 first_step. Every version is read (the fields it lacks take their defaults).

Lambdas carry the fingerprint of the model they were fitted on (``Lambdas.model``, also recorded as
the artifact's ``model_fingerprint`` param); ``load_lambdas(..., model=fingerprint)`` refuses weights
fitted on another model unless ``allow_other_model``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

from dode.common.bounded import load_json
from dode.core.correction import Lambdas
from dode.core.gaussian import MAX_GAUSSIAN_JSON_BYTES
from dode.store.registry import Artifact, Registry

LAMBDAS_FILE = "lambdas.json"
LAMBDAS_SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (1, 2, 3)


def lambdas_to_dict(lambdas: Lambdas) -> dict[str, Any]:
    """The JSON object of ``lambdas`` at the current schema version."""
    return {"schema_version": LAMBDAS_SCHEMA_VERSION, **asdict(lambdas)}


def lambdas_to_json(lambdas: Lambdas) -> str:
    return json.dumps(lambdas_to_dict(lambdas), indent=2, sort_keys=True)


def lambdas_from_dict(data: Any) -> Lambdas:
    """Lambdas from their JSON object (any readable schema version); one ValueError naming the problem otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"lambdas must be a JSON object, got a {type(data).__name__}")
    data = dict(data)
    version = data.pop("schema_version", None)
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ValueError(f"lambdas schema version {version!r}, this dode reads {list(READABLE_SCHEMA_VERSIONS)}; "
                         "re-distill with this version of dode")
    known = {f.name for f in fields(Lambdas)}
    unknown, missing = sorted(set(data) - known), [k for k in ("values", "solver", "sigmas") if k not in data]
    if unknown or missing:
        raise ValueError(f"malformed lambdas: unknown fields {unknown}, missing fields {missing}")
    return Lambdas(**data)


def lambdas_from_json(text: str | bytes) -> Lambdas:
    """Lambdas from their JSON (bounded: ``dode.common.bounded``; large enough for an embedded Gaussian)."""
    return lambdas_from_dict(load_json(text, "lambdas", max_bytes=MAX_GAUSSIAN_JSON_BYTES))


def save_lambdas(
    reg: Registry,
    lambdas: Lambdas,
    key: str,
    parents: Sequence[str | Artifact] = (),
    params: Mapping[str, Any] | None = None,
    *,
    provenance: Mapping[str, Any] | None = None,
) -> Artifact:
    """Publish ``lambdas`` as a 'lambdas' artifact; solver, nfe, steps, correction and the model join ``params``."""
    info = {"solver": lambdas.solver, "nfe": lambdas.nfe, "steps": len(lambdas.sigmas) - 1,
            "correction": lambdas.correction, **(params or {})}
    if lambdas.model:
        info["model_fingerprint"] = lambdas.model
    files = {LAMBDAS_FILE: lambdas_to_json(lambdas).encode()}
    return reg.publish("lambdas", key, files, params=info, parents=parents, provenance=provenance)


def fitted_on(reg: Registry, art: Artifact, lambdas: Lambdas) -> str:
    """The fingerprint of the model the lambdas were fitted on: their own record, the artifact's params,
    else the 'model' artifact in their lineage; "" when unknown."""
    if lambdas.model or art.params.get("model_fingerprint"):
        return lambdas.model or str(art.params["model_fingerprint"])
    models = [a for a in reg.lineage(art) if a.kind == "model"]
    return str(models[0].params.get("fingerprint", "")) if models else ""


def lambdas_artifact(reg: Registry, ref: str | Artifact) -> Artifact:
    """The 'lambdas' artifact ``ref`` (id, unique id prefix or Artifact); a ValueError naming its kind otherwise."""
    art = reg.get(ref)
    if art.kind != "lambdas":
        raise ValueError(f"artifact {art.short} is a {art.kind!r} artifact ({art.key}), not 'lambdas'")
    return art


def load_lambdas(
    reg: Registry, ref: str | Artifact, *, model: str | None = None, allow_other_model: bool = False
) -> Lambdas:
    """The Lambdas stored in a 'lambdas' artifact (id, unique id prefix or Artifact), file verified.

    With ``model`` (a ``Model.fingerprint``), weights fitted on another model are refused unless
    ``allow_other_model``; weights whose model is unknown are accepted.
    """
    art = lambdas_artifact(reg, ref)
    lambdas = lambdas_from_json(reg.read_bytes(art, LAMBDAS_FILE))
    if model:
        check_model(reg, art, lambdas, model, allow_other_model=allow_other_model)
    return lambdas


def check_model(reg: Registry, art: Artifact, lambdas: Lambdas, model: str, *, allow_other_model: bool = False) -> None:
    """Refuse lambdas fitted on another model than ``model`` (a fingerprint) unless ``allow_other_model``."""
    fitted = "" if allow_other_model else fitted_on(reg, art, lambdas)
    if fitted and fitted != model:
        raise ValueError(f"lambdas {art.short} ({art.key}) were fitted on model {fitted[:16]}, not on the model "
                         f"being sampled ({model[:16]}); distill lambdas for this model, or pass "
                         "--allow-other-model (allow_other_model=True) to use them anyway")
