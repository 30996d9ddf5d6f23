"""``dode artifacts get ID --format diffusers``: a learned schedule in the form stock diffusers schedulers take.

The timesteps-only variant of the final objective (``learn_lambdas=False``) is a grid of noise levels and nothing
else, so a stock scheduler can use it without dode: diffusers' ``EulerDiscreteScheduler`` takes it as ``sigmas=``
(the grid, ending in 0; the network timesteps follow by its own log-sigma interpolation, as dode's), and
``DPMSolverMultistepScheduler`` as integer ``timesteps=`` (exact where the grid's sigmas are those of integer
training timesteps; otherwise the nearest ones, and ``exact`` is false). Other solvers have no stock diffusers
scheduler that takes a custom schedule of a DDPM-trained model (diffusers 0.42: UniPC takes ``sigmas`` only for flow
models); the grid is written all the same, for ``DODEScheduler``. Lambdas are not applied by stock schedulers:
the export is the dode sampler *without* them (all of it for a timesteps-only result).

Writes ``DIR/schedule.json`` (schema below, ``SCHEMA_VERSION``) and ``DIR/use_schedule.py`` (the snippet).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dode.core.correction import Lambdas
from dode.core.solvers import get_solver
from dode.models.folders import check_scheduler_config
from dode.models.vp import VPDenoiser
from dode.store.fetch import write_files

SCHEMA_VERSION = 1
TRAINING_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")


def diffusers_schedule(lam: Lambdas, training: dict[str, Any] | None, artifact_id: str = "") -> dict[str, Any]:
    """The schedule.json content for ``lam`` on a model with DDPM ``training`` schedule (a scheduler config;
    None for models without one, e.g. analytic ones: then only the sigmas)."""
    sigmas = [float(s) for s in lam.sigmas]
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "artifact": artifact_id, "solver": lam.solver,
                           "nfe": lam.nfe, "sigmas": sigmas, "lambdas": [float(v) for v in lam.values],
                           "lambdas_applied_by_stock_schedulers": False, "timesteps": None, "scheduler": None}
    if training is None:
        return out
    from diffusers import DDPMScheduler

    config = {k: training[k] for k in TRAINING_KEYS if k in training}
    check_scheduler_config(config, f"the scheduler config of artifact {artifact_id[:12]}'s model")
    schedule = VPDenoiser(None, DDPMScheduler(**config).alphas_cumprod, config.get("prediction_type", "epsilon"))
    t = schedule.sigma_to_t(torch.tensor(sigmas[:-1], dtype=torch.float64))
    out["timesteps"] = t.tolist()
    stock = next((s for s in get_solver(lam.solver).stock if s.takes), None)  # the first that takes a schedule
    if stock is not None:
        name, solver_config, takes = stock.scheduler, dict(stock.config), stock.takes
        if takes == "sigmas":
            given, exact = sigmas, True
        else:
            given = [int(v) for v in t.round().long()]
            exact = bool(torch.allclose(t, torch.tensor(given, dtype=torch.float64), atol=1e-6))
        out["scheduler"] = {"class": name, "config": {**config, **solver_config}, "set_timesteps": {takes: given},
                            "exact": exact}
    return out


SNIPPET = '''"""Sample with the schedule of dode artifact {artifact} in a stock diffusers pipeline (no dode needed).

{note}
"""
import json
from pathlib import Path

import diffusers

spec = json.loads((Path(__file__).parent / "schedule.json").read_text())["scheduler"]
pipe = diffusers.DiffusionPipeline.from_pretrained("path/to/your/pipeline")  # the model the schedule was learned on
pipe.scheduler = getattr(diffusers, spec["class"]).from_config(pipe.scheduler.config, **spec["config"])
image = pipe("a prompt", **spec["set_timesteps"]).images[0]  # {takes}=...: the learned grid
# Without a pipeline: scheduler.set_timesteps(**spec["set_timesteps"]), then the usual denoising loop.
'''


def training_schedule(reg: Any, art: Any) -> dict[str, Any] | None:
    """The DDPM scheduler config of the model in ``art``'s lineage (a diffusers folder artifact), else None."""
    for model in (a for a in reg.lineage(art) if a.kind == "model"):
        names = [n for n in model.files if n.endswith("scheduler/scheduler_config.json")]
        if names:
            return reg.read_json(model, names[0])
    return None


def export_lambdas(reg: Any, art: Any, out: Path, force: bool = False) -> tuple[int, str]:
    """``dode artifacts get ID --format diffusers``: a lambdas artifact's schedule for stock diffusers schedulers."""
    from dode.store.lambdas import load_lambdas

    if art.kind != "lambdas":
        raise ValueError(f"--format diffusers writes the schedule of a 'lambdas' artifact; {art.short} is a "
                         f"{art.kind!r} artifact")
    return write_diffusers_schedule(load_lambdas(reg, art), training_schedule(reg, art), out, art.id, force)


def write_diffusers_schedule(lam: Lambdas, training: dict[str, Any] | None, out: Path, artifact_id: str = "",
                             force: bool = False) -> tuple[int, str]:
    """Write schedule.json and use_schedule.py into ``out`` (refusing other content there unless ``force``)."""
    spec = diffusers_schedule(lam, training, artifact_id)
    stock = spec["scheduler"]
    if stock is None:
        note = (f"No stock diffusers scheduler takes a custom schedule for {lam.solver!r} on this model: sample on "
                "the grid with dode.integrations.diffusers.scheduler.DODEScheduler.from_scheduler(pipe.scheduler, "
                "solver=..., grid=dode.core.grids.GridSpec.explicit(spec['sigmas'])).")
        snippet = f'"""{note}"""\n'
    else:
        note = ("The lambdas are not applied (stock schedulers cannot): this is the dode sampler without them. "
                + ("" if stock["exact"] else "The grid was rounded to integer training timesteps (not exact). "))
        snippet = SNIPPET.format(artifact=artifact_id or "?", note=note.strip(),
                                 takes=next(iter(stock["set_timesteps"])))
    files = {"schedule.json": json.dumps(spec, indent=2) + "\n", "use_schedule.py": snippet}
    return write_files({name: text.encode() for name, text in files.items()}, out, force), "schedule file(s)"
