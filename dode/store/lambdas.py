"""Lambdas as registry artifacts: one ``lambdas.json`` (``Lambdas.to_json``) per artifact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..correction import Lambdas
from .registry import Artifact, Registry

LAMBDAS_FILE = "lambdas.json"


def save_lambdas(
    reg: Registry,
    lambdas: Lambdas,
    key: str,
    parents: Sequence[str | Artifact] = (),
    params: Mapping[str, Any] | None = None,
    *,
    provenance: Mapping[str, Any] | None = None,
) -> Artifact:
    """Publish ``lambdas`` as a 'lambdas' artifact; solver, nfe, steps and correction join ``params``."""
    info = {"solver": lambdas.solver, "nfe": lambdas.nfe, "steps": len(lambdas.sigmas) - 1,
            "correction": lambdas.correction, **(params or {})}
    files = {LAMBDAS_FILE: lambdas.to_json().encode()}
    return reg.publish("lambdas", key, files, params=info, parents=parents, provenance=provenance)


def load_lambdas(reg: Registry, ref: str | Artifact) -> Lambdas:
    """The Lambdas stored in a 'lambdas' artifact (id, unique id prefix or Artifact)."""
    art = reg.get(ref)
    if art.kind != "lambdas":
        raise ValueError(f"artifact {art.short} is a {art.kind!r} artifact ({art.key}), not 'lambdas'")
    return Lambdas.from_json(reg.read_bytes(art, LAMBDAS_FILE).decode())
