"""The diffusers schedulers a DODEScheduler replaces at lambda = 0: which dode solver each one is, and its grid.

Built from a stock scheduler (``DODEScheduler.from_scheduler(pipe.scheduler)``), a DODEScheduler samples on the
stock scheduler's own noise levels, calls the network at its timesteps and starts from its initial noise, so that
with lambda = 0 it gives what the stock scheduler gives, same seed (tests/test_diffusers_stock.py, 1e-5 relative):

- ``EulerDiscreteScheduler`` -> euler, ``HeunDiscreteScheduler`` -> heun (their sample is x = x0 + sigma n
  already; initial noise sigma_0 n, or sqrt(sigma_0^2 + 1) n for timestep_spacing="leading", as theirs);
- ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2 / 3) -> dpmpp_2m / dpmpp_3m,
  ``UniPCMultistepScheduler`` (bh2, order 2 / 3) -> unipc_2 / unipc, ``DDIMScheduler`` -> euler (DDIM is
  Euler in sigma space, Song et al., 2021, eq. 14): these keep x_VP = x / sqrt(sigma^2 + 1) and start from unit
  noise in it, i.e. x = sqrt(sigma_0^2 + 1) n here.

DDIM's last step goes to the ``final_alpha_cumprod`` (alphas_cumprod[0] unless set_alpha_to_one): that sigma_f
is kept as ``final_sigma`` and the last update lands there. What cannot be reproduced by an ODE solver on a grid
ending in 0 is refused with one error saying which setting to change.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch

from dode.core.solvers import SOLVERS
from dode.core.types import Tensor

VP_SAMPLE = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DDIMScheduler")  # x_VP, unit start


@dataclass(frozen=True)
class StockGrid:
    """A stock scheduler's run of ``steps`` steps in dode's terms."""

    sigmas: Tensor  # (steps + 1,) float64, decreasing, ending in 0: the dode grid
    timesteps: Tensor  # one network timestep per evaluation, as the stock scheduler passes them
    initial_noise: str  # "sigma" (x_T = sigma_0 n) or "vp" (x_T = sqrt(sigma_0^2 + 1) n)
    final_sigma: float  # where the last update lands (0 but for DDIM without set_alpha_to_one)


def _refuse(name: str, setting: str, fix: str) -> ValueError:
    return ValueError(f"{name} with {setting} has no lambda = 0 equivalent in DODEScheduler; {fix}")


def stock_solvers(scheduler: str) -> dict[int | None, str]:
    """The registered solvers stock ``scheduler`` is at lambda = 0 (their ``Solver.stock``), by the solver_order
    setting that selects each (None where none does); the first registered where two share one."""
    out: dict[int | None, str] = {}
    for solver in SOLVERS.values():
        for stock in solver.stock:
            if stock.scheduler == scheduler:
                out.setdefault(stock.config.get("solver_order"), solver.name)
    return out


def _multistep_solver(config: dict[str, Any], name: str, kind: str, value: str) -> str:
    if config.get(kind, value) != value:
        raise _refuse(name, f"{kind}={config.get(kind)!r}", f"use {kind}={value!r}")
    if config.get("final_sigmas_type", "zero") != "zero":
        raise _refuse(name, "final_sigmas_type='sigma_min'", "use final_sigmas_type='zero' (the default)")
    if config.get("thresholding"):
        raise _refuse(name, "thresholding=True", "use thresholding=False")
    order, orders = config.get("solver_order", 2), stock_solvers(name)
    if order not in orders:
        raise _refuse(name, f"solver_order={order}", f"use solver_order in {sorted(orders)}")
    return orders[order]


def _ddim_solver(config: dict[str, Any]) -> str:
    if config.get("clip_sample", True) or config.get("thresholding"):
        raise _refuse("DDIMScheduler", "clip_sample=True (its class default) or thresholding",
                      "build it with clip_sample=False, as Stable Diffusion's configs do: "
                      "DDIMScheduler.from_config(config, clip_sample=False)")
    return stock_solvers("DDIMScheduler")[None]


STOCK_SOLVERS = {
    "EulerDiscreteScheduler": lambda config: stock_solvers("EulerDiscreteScheduler")[None],
    "HeunDiscreteScheduler": lambda config: stock_solvers("HeunDiscreteScheduler")[None],
    "DPMSolverMultistepScheduler": lambda config: _multistep_solver(
        config, "DPMSolverMultistepScheduler", "algorithm_type", "dpmsolver++"),
    "UniPCMultistepScheduler": lambda config: _multistep_solver(
        config, "UniPCMultistepScheduler", "solver_type", "bh2"),
    "DDIMScheduler": _ddim_solver,
}


FLOW_STOCK = "FlowMatchEulerDiscreteScheduler"  # flow matching's Euler: DODEFlowScheduler's solver "euler"


def is_stock(config: dict[str, Any]) -> bool:
    """Whether ``config`` is one of the schedulers above (by its ``_class_name``)."""
    return config.get("_class_name") in STOCK_SOLVERS


def stock_class_name(config: dict[str, Any]) -> str | None:
    """The stock scheduler (above, or ``FLOW_STOCK``) a config was made by: its ``_class_name`` (a saved config),
    else the class with the most ``__init__`` parameters that are all keys of it (a live ``scheduler.config`` names
    no class; diffusers records every parameter, and keeps keys of the configs it was converted from); None for
    any other config."""
    import diffusers

    names = (*STOCK_SOLVERS, FLOW_STOCK)
    if config.get("_class_name"):
        return config["_class_name"] if config["_class_name"] in names else None
    params = {name: set(inspect.signature(getattr(diffusers, name).__init__).parameters) - {"self"} for name in names}
    fits = sorted((len(p), name) for name, p in params.items() if p <= set(config))
    return fits[-1][1] if fits and (len(fits) == 1 or fits[-1][0] > fits[-2][0]) else None


def stock_solver(config: dict[str, Any]) -> str:
    """The dode solver a stock scheduler's config is; a ValueError naming the supported ones otherwise."""
    name = config.get("_class_name")
    if name not in STOCK_SOLVERS:
        raise ValueError(f"{name or 'this scheduler'} is not a scheduler DODEScheduler reproduces at lambda = 0; "
                         f"choose one of {sorted(STOCK_SOLVERS)}, or name solver= and nfe=")
    if config.get("use_karras_sigmas") and config.get("timestep_type") == "continuous":
        raise _refuse(name, "timestep_type='continuous'", "use timestep_type='discrete'")
    return STOCK_SOLVERS[name](config)


def stock_grid(config: dict[str, Any], steps: int) -> StockGrid:
    """The grid, network timesteps, initial noise and final sigma of the stock scheduler at ``steps`` steps."""
    import diffusers

    name = config["_class_name"]
    stock_solver(config)
    scheduler = getattr(diffusers, name).from_config(copy.deepcopy(dict(config)))
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.clone()
    if name == "DDIMScheduler":
        return _ddim_grid(scheduler, timesteps)
    sigmas = scheduler.sigmas.detach().to("cpu", torch.float64)
    if name == "HeunDiscreteScheduler":  # diffusers repeats every interior sigma (predictor and corrector)
        sigmas = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    if sigmas[-1] != 0:
        raise _refuse(name, f"a last sigma of {float(sigmas[-1]):.4g}", "use final_sigmas_type='zero' (the default)")
    if name in VP_SAMPLE:
        initial = "vp"
    else:
        start = float(scheduler.init_noise_sigma)
        initial = "sigma" if abs(start - float(sigmas[0])) <= 1e-6 * start else "vp"
    return StockGrid(sigmas, timesteps, initial, 0.0)


def _ddim_grid(scheduler: Any, timesteps: Tensor) -> StockGrid:
    """DDIM steps from timestep t to t - T/N (Song et al., 2021, eq. 12), the last one to final_alpha_cumprod."""
    abar = scheduler.alphas_cumprod.to(torch.float64)
    jump = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    if any(int(a) - jump != int(b) for a, b in pairwise(timesteps.tolist())):
        raise _refuse("DDIMScheduler", f"timesteps {timesteps.tolist()} (each step jumps {jump}, not to the next "
                      "timestep)", "use timestep_spacing='leading' or a number of steps that divides "
                      f"num_train_timesteps={scheduler.config.num_train_timesteps}")
    sigmas = ((1 - abar[timesteps]) / abar[timesteps]).sqrt()
    last = int(timesteps[-1]) - jump
    final = float(abar[last] if last >= 0 else scheduler.final_alpha_cumprod)
    return StockGrid(torch.cat([sigmas, sigmas.new_zeros(1)]), timesteps, "vp", ((1 - final) / final) ** 0.5)


__all__ = ["FLOW_STOCK", "STOCK_SOLVERS", "StockGrid", "is_stock", "stock_class_name", "stock_grid", "stock_solver",
           "stock_solvers"]
