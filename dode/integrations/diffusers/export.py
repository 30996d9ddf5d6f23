"""``dode artifacts get ID --format diffusers``: a lambdas artifact's grid in the form a stock diffusers scheduler
takes, written only where that scheduler, run on it, *is* dode's sampler on the grid without the lambdas (stock
schedulers cannot apply them); refused with one error saying what to use instead everywhere else.

- DDPM-trained models: ``euler`` -> ``EulerDiscreteScheduler(sigmas=grid)`` (the network timesteps follow by its
  own log-sigma interpolation, as dode's); ``dpmpp_2m`` / ``dpmpp_3m`` -> ``DPMSolverMultistepScheduler(timesteps=)``
  where the grid's sigmas are those of integer training timesteps (it takes no other grid). UniPC takes custom
  grids only for flow-matching models (diffusers 0.42), Heun and the rest none.
- Flow-matching models: ``euler`` -> ``FlowMatchEulerDiscreteScheduler(sigmas=t)``, t = sigma / (1 + sigma), with
  ``shift=1`` and no dynamic shifting: that scheduler shifts given sigmas, and the stored grid is already shifted;
  ``unipc`` / ``unipc_2`` -> ``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=1, sigmas=t)`` where the
  grid starts below t = 1 - 1e-6 (UniPC moves a first time of 1 there, and its first step then differs).
- An analytic first step (the Gaussian's evaluation at sigma_0, no network call) is made by no stock scheduler:
  refused, pointing at ``DODEScheduler``, which takes it.

The snippet matches the model's pipeline: a text-to-image pipeline takes the grid in its call
(``pipe(prompt, sigmas=...)``); an unconditional one (``DDPMPipeline`` never calls ``scale_model_input`` nor takes a
grid) gets the denoising loop over its UNet. tests/test_export_diffusers.py runs each exported spec in the stock
scheduler against ``dode.sample`` on the same grid (float64, 1e-5).

Writes ``DIR/schedule.json`` (schema below, ``SCHEMA_VERSION``) and ``DIR/use_schedule.py`` (the snippet).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dode.core.correction import Lambdas
from dode.core.solvers import SOLVERS
from dode.models.flow import FlowSchedule, is_flow_config, sigma_to_flow_time
from dode.models.folders import check_scheduler_config
from dode.models.vp import VPDenoiser
from dode.store.fetch import write_files

SCHEMA_VERSION = 2
UNIPC_T_MAX = 1 - 1e-6  # UniPC moves a first time above this down to it (its log(alpha_t) at t = 1 is -inf)
TRAINING_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")
UNCONDITIONAL = ("DDPMPipeline", "DDIMPipeline", "DODEPipeline")  # pipelines with a UNet and no prompt
INTEGER_TIMESTEP_ATOL = 1e-6


def _refuse(lam: Lambdas, why: str, artifact_id: str) -> ValueError:
    ref = artifact_id[:12] or "ID"
    return ValueError(f"no stock diffusers scheduler samples this {lam.solver!r} artifact as dode does: {why}. "
                      f"Sample it with DODEScheduler: pipe.scheduler = DODEScheduler.from_artifact(registry, "
                      f"{ref!r}, pipe.scheduler) (from dode.integrations.diffusers.scheduler)")


def diffusers_schedule(lam: Lambdas, training: dict[str, Any] | None, artifact_id: str = "") -> dict[str, Any]:
    """The schedule.json content for ``lam`` on a model with the scheduler config ``training`` (DDPM or flow
    matching); a ValueError where no stock scheduler reproduces dode's sampler on the grid."""
    if lam.first_step:
        raise _refuse(lam, "its first evaluation is the analytic Gaussian step (no network call), which stock "
                      "schedulers do not take", artifact_id)
    if training is None:
        raise _refuse(lam, "its model has no diffusers scheduler config", artifact_id)
    sigmas = torch.tensor(lam.sigmas, dtype=torch.float64)
    flow = is_flow_config(training)
    takers = {name: next(s for s in solver.stock if s.takes and s.flow == flow) for name, solver in SOLVERS.items()
              if any(s.takes and s.flow == flow for s in solver.stock)}  # Solver.stock: the first that takes a grid
    if lam.solver not in takers:
        raise _refuse(lam, f"diffusers' schedulers take a custom grid for {sorted(takers)} only on "
                      f"{'flow-matching' if flow else 'DDPM-trained'} models", artifact_id)
    stock = takers[lam.solver]
    name, solver_config, takes = stock.scheduler, dict(stock.config), stock.takes
    if flow:
        schedule = FlowSchedule.from_config(training)
        config = {"num_train_timesteps": schedule.num_train_timesteps, **solver_config}
        t = sigma_to_flow_time(sigmas[:-1])
        timesteps, given = (schedule.num_train_timesteps * t).tolist(), t.tolist()
        if name == "UniPCMultistepScheduler" and given[0] > UNIPC_T_MAX:
            raise _refuse(lam, f"the grid starts at t = {given[0]:.9g}, which {name} moves to {UNIPC_T_MAX} (its "
                          "first step then differs); a grid from a finite sigma exports", artifact_id)
    else:
        from diffusers import DDPMScheduler

        ddpm = {k: training[k] for k in TRAINING_KEYS if k in training}
        check_scheduler_config(ddpm, f"the scheduler config of artifact {artifact_id[:12]}'s model")
        config = {**ddpm, **solver_config}
        vp = VPDenoiser(None, DDPMScheduler(**ddpm).alphas_cumprod, ddpm.get("prediction_type", "epsilon"))
        t = vp.sigma_to_t(sigmas[:-1])
        timesteps, given = t.tolist(), lam.sigmas if takes == "sigmas" else [int(v) for v in t.round().long()]
        if takes == "timesteps" and not torch.allclose(t, t.round(), rtol=0, atol=INTEGER_TIMESTEP_ATOL):
            raise _refuse(lam, f"{name} takes integer training timesteps only, and this grid lies between them "
                          f"(timesteps {[round(v, 2) for v in timesteps]})", artifact_id)
    return {"schema_version": SCHEMA_VERSION, "artifact": artifact_id, "solver": lam.solver, "nfe": lam.nfe,
            "sigmas": [float(s) for s in lam.sigmas], "lambdas": [float(v) for v in lam.values],
            "lambdas_applied_by_stock_schedulers": False, "timesteps": timesteps, "flow": flow,
            "scheduler": {"class": name, "config": config, "set_timesteps": {takes: [float(v) for v in given]
                                                                              if takes == "sigmas" else given}}}


HEADER = '''"""Sample with the grid of dode artifact {artifact} in a stock diffusers pipeline (no dode needed).

The lambdas are not applied (stock schedulers cannot): this is the dode sampler on the artifact's grid without
them, {solver} on {nfe} network calls. With the lambdas: dode's DODEScheduler.from_artifact.
"""
import json
from pathlib import Path

import diffusers
import numpy
import torch

spec = json.loads((Path(__file__).parent / "schedule.json").read_text())["scheduler"]
grid = {{key: numpy.asarray(value) for key, value in spec["set_timesteps"].items()}}  # UniPC takes arrays only
pipe = diffusers.DiffusionPipeline.from_pretrained("path/to/your/pipeline")  # the model the grid was learned on
scheduler = getattr(diffusers, spec["class"]).from_config(pipe.scheduler.config, **spec["config"])
'''
TEXT_TO_IMAGE = '''pipe.scheduler = scheduler
image = pipe("a prompt", **grid).images[0]  # {takes}=...: the learned grid
'''
UNCONDITIONAL_LOOP = '''# {pipeline} takes no grid (and never scales its inputs): the denoising loop over its UNet.
scheduler.set_timesteps(**grid)
unet, size = pipe.unet, pipe.unet.config.sample_size
x = torch.randn(4, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
{start}
with torch.no_grad():
    for t in scheduler.timesteps:
        x = scheduler.step(unet({network_input}, t).sample, t, x).prev_sample
images = (x / 2 + 0.5).clamp(0, 1)  # in [0, 1]
'''
LOOP_INPUTS = {  # (start, network input): flow matching starts at unit noise and feeds x_t as it is
    True: ("# flow matching: x_1 is the unit noise itself", "x"),
    False: ("x = x * scheduler.init_noise_sigma", "scheduler.scale_model_input(x, t)"),
}


def snippet(spec: dict[str, Any], pipeline: str | None) -> str:
    """use_schedule.py for a model whose pipeline class is ``pipeline`` (model_index.json's; None if unknown:
    the loop, which any pipeline with a ``unet`` runs)."""
    head = HEADER.format(artifact=spec["artifact"] or "?", solver=spec["solver"], nfe=spec["nfe"])
    if pipeline is not None and pipeline not in UNCONDITIONAL:
        return head + TEXT_TO_IMAGE.format(takes=next(iter(spec["scheduler"]["set_timesteps"])))
    start, network_input = LOOP_INPUTS[spec["flow"]]
    return head + UNCONDITIONAL_LOOP.format(pipeline=pipeline or "This pipeline", start=start,
                                            network_input=network_input)


def model_files(reg: Any, art: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The scheduler config and the pipeline class of the model in ``art``'s lineage (a diffusers folder artifact),
    else (None, None)."""
    for model in (a for a in reg.lineage(art) if a.kind == "model"):
        names = [n for n in model.files if n.endswith("scheduler/scheduler_config.json")]
        if names:
            index = [n for n in model.files if n.endswith("model_index.json")]
            pipeline = reg.read_json(model, index[0]).get("_class_name") if index else None
            # The class name lands in the written snippet: an identifier only (a forged one is not code there).
            return reg.read_json(model, names[0]), pipeline if isinstance(pipeline, str) and pipeline.isidentifier() \
                else None
    return None, None


def export_lambdas(reg: Any, art: Any, out: Path, force: bool = False) -> tuple[int, str]:
    """``dode artifacts get ID --format diffusers``: a lambdas artifact's grid for stock diffusers schedulers."""
    from dode.store.lambdas import load_lambdas

    if art.kind != "lambdas":
        raise ValueError(f"--format diffusers writes the schedule of a 'lambdas' artifact; {art.short} is a "
                         f"{art.kind!r} artifact")
    training, pipeline = model_files(reg, art)
    return write_diffusers_schedule(load_lambdas(reg, art), training, out, art.id, force, pipeline)


def write_diffusers_schedule(lam: Lambdas, training: dict[str, Any] | None, out: Path, artifact_id: str = "",
                             force: bool = False, pipeline: str | None = None) -> tuple[int, str]:
    """Write schedule.json and use_schedule.py into ``out`` (refusing other content there unless ``force``)."""
    spec = diffusers_schedule(lam, training, artifact_id)
    files = {"schedule.json": json.dumps(spec, indent=2) + "\n", "use_schedule.py": snippet(spec, pipeline)}
    return write_files({name: text.encode() for name, text in files.items()}, out, force), "schedule file(s)"
