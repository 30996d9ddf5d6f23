"""Parameter checks shared by the flows and ``dode run`` (which checks before starting a flow run, so bad
input gives one clear error instead of a failed run). No Prefect import here."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dode
from dode.grids import FAMILIES, GridSpec
from dode.models import MODELS

FEATURES = {"fd-digits": "digits", "fd-pixels": "pixels", "fid": "inception"}  # metric -> feature extractor
METRICS = (*FEATURES, "rmse")  # rmse: paired, to the teacher's samples from the same seeds
CORRECTIONS = ("data", "noise")


def check_choice(what: str, value: Any, choices: Iterable[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {sorted(choices)}")


def check_model(name: str) -> None:
    if name not in MODELS and not Path(name).is_dir() and "/" not in name:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}, a diffusers folder, or a hub id")


def check_metrics(metrics: Iterable[str]) -> None:
    metrics = list(metrics)
    if metrics == ["auto"]:
        return
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"unknown metric(s) {bad}; choose from {list(METRICS)}, or 'auto'")


def check_positive(params: dict[str, Any], *names: str) -> None:
    bad = [n for n in names if params.get(n) is not None and params[n] < 1]
    if bad:
        raise ValueError(f"{', '.join(bad)} must be >= 1")


def plan_cells(solvers: list[str], nfes: list[int], nfes_by_solver: dict[str, list[int]] | None,
               family: str) -> list[dict]:
    """The (solver, NFE, grid) cells of a sweep. NFEs a solver cannot make exactly (heun: odd only) are
    left out of the shared ``nfes``; per-solver lists in ``nfes_by_solver`` must all be valid."""
    for s in [*solvers, *(nfes_by_solver or {})]:
        check_choice("solver", s, dode.SOLVERS)
    check_choice("grid family", family, FAMILIES)
    cells = []
    for solver in solvers:
        explicit = (nfes_by_solver or {}).get(solver)
        for nfe in sorted(set(explicit if explicit is not None else nfes)):
            if nfe < 2:
                raise ValueError(f"D-ODE needs at least 2 network evaluations; got NFE {nfe} for {solver}")
            try:
                spec = GridSpec.for_nfe(family, solver, nfe)
            except ValueError:
                if explicit is not None:
                    raise
                continue
            cells.append({"solver": solver, "nfe": nfe, "grid": spec.to_dict()})
    if not cells:
        raise ValueError(f"no solver in {list(solvers)} can make exactly the NFEs {sorted(nfes)}; "
                         "heun makes odd NFEs only")
    return cells


def _teacher(p: dict[str, Any]) -> None:
    check_choice("teacher solver", p["teacher_solver"], dode.SOLVERS)
    check_positive(p, "teacher_factor", "n_distill", "batch_size")


def _pipeline(p: dict[str, Any]) -> None:
    check_model(p["model"])
    _teacher(p)
    check_choice("correction", p["correction"], CORRECTIONS)
    check_metrics(p["metrics"])
    check_positive(p, "n_samples", "num_shards")
    if not 0 < p["holdout"] < 1:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {p['holdout']}")
    plan_cells(list(p["solvers"]), list(p["nfes"]), p["nfes_by_solver"], p["family"])


def _teacher_flow(p: dict[str, Any]) -> None:
    check_model(p["model"])
    _teacher(p)
    check_choice("grid family", p["family"], FAMILIES)
    check_positive(p, "steps")


def _distill(p: dict[str, Any]) -> None:
    check_model(p["model"])
    _teacher(p)
    check_choice("correction", p["correction"], CORRECTIONS)
    plan_cells([p["solver"]], [], {p["solver"]: [p["nfe"]]}, p["family"])


def _sample(p: dict[str, Any]) -> None:
    check_model(p["model"])
    check_positive(p, "n_samples", "batch_size", "num_shards")
    if p["lambdas"] is None:
        if p["solver"] is None or p["nfe"] is None:
            raise ValueError("give solver and nfe (base sampling), or lambdas=<lambdas artifact id>")
        plan_cells([p["solver"]], [], {p["solver"]: [p["nfe"]]}, p["family"])
    elif p["solver"] is not None or p["nfe"] is not None:
        raise ValueError("lambdas fix the solver and grid; drop solver/nfe when sampling with lambdas")


def _score(p: dict[str, Any]) -> None:
    check_model(p["model"])
    check_metrics(p["metrics"])
    check_positive(p, "n_samples", "batch_size", "num_shards")
    if p["samples"] and p["lambdas"]:
        raise ValueError("give samples (to score them) or lambdas (to re-evaluate them), not both")


VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {
    "pipeline": _pipeline, "teacher": _teacher_flow, "distill": _distill, "sample": _sample, "score": _score,
}


def validate(stage: str, params: dict[str, Any]) -> None:
    """One ValueError naming the first bad parameter of ``stage`` (all parameters, defaults filled in)."""
    VALIDATORS[stage](params)
