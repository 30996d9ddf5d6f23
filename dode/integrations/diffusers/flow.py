"""The flow-matching half of ``DODEFlowScheduler`` (``dode.integrations.diffusers.scheduler``), the DODEScheduler for
flow-matching pipelines (Stable Diffusion 3, FLUX).

It takes the place of ``FlowMatchEulerDiscreteScheduler``: the pipeline's sample is x_t = (1 - t) x0 + t eps
starting from unit noise at t = 1, the network predicts the velocity v = eps - x0 at timestep T t, and the
pipeline never calls ``scale_model_input``. Every ``step`` moves x_t into sigma space, x = (1 + sigma) x_t
(``dode.models.flow``), converts v to D = x_t - t v, applies the D-ODE correction and the solver update of
``DODEScheduler.step``, and returns x_t' = x' / (1 + sigma'). With lambda = 0, Euler in sigma space is
exactly diffusers' flow-matching Euler x_t' = x_t + (t' - t) v, so the default grid (``GridSpec("flow")``,
FlowMatchEulerDiscreteScheduler's sigmas with its ``shift`` or the pipeline's ``mu``) reproduces the stock
scheduler.

``set_timesteps`` takes what the pipelines pass: ``num_inference_steps``, ``mu`` (dynamic shifting: SD3 with
``use_dynamic_shifting``, FLUX always) and ``sigmas`` as flow times t, shifted as the stock scheduler shifts
them (FLUX passes linspace(1, 1/N, N)). img2img (SD3): ``set_begin_index`` and ``scale_noise``, the flow
forward process, then the remaining grid from the pipeline's x_t.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import register_to_config

from dode.core.types import Tensor
from dode.distillation.config import STUDENT_SOLVER
from dode.models.flow import FlowDenoiser, FlowSchedule, check_flow_start, flow_time_to_sigma


def _is_pipeline_default(times: Tensor) -> bool:
    """Whether flow times are FluxPipeline's default for N = len(times) steps, linspace(1, 1/N, N)."""
    n = len(times)
    return bool(torch.allclose(times, torch.linspace(1.0, 1 / n, n, dtype=torch.float64), rtol=0, atol=1e-12))


class FlowSchedulerMixin:
    """Put before ``DODEScheduler`` in a scheduler's bases (``DODEFlowScheduler``): a dode solver with D-ODE
    lambdas on a flow-matching model, configured like ``FlowMatchEulerDiscreteScheduler`` (its schedule keys,
    read by the SD3 and FLUX pipelines) plus ``solver``, ``grid`` / ``sigmas`` (sigma space), ``correction``
    and ``lambdas`` as ``DODEScheduler``. Build one with ``DODEScheduler.from_scheduler(pipe.scheduler, ...)``."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: str = "exponential",
        shift_terminal: float | None = None,
        solver: str = STUDENT_SOLVER,
        grid: dict[str, Any] | None = None,
        sigmas: Sequence[float] | None = None,
        correction: str = "data",
        lambdas: Sequence[float] | None = None,
        artifact_id: str | None = None,
    ) -> None:
        self._init_dode(solver, correction, grid, sigmas, lambdas)
        # The schedule half of the flow adapter: sigma -> timestep T t, and the default grid.
        self.schedule = FlowDenoiser(None, FlowSchedule.from_config(self.config))
        if sigmas is not None or (grid is not None and not use_dynamic_shifting):
            self.set_timesteps()

    @staticmethod
    def training_config(config: dict[str, Any]) -> dict[str, Any]:
        """The schedule keys of a ``FlowMatchEulerDiscreteScheduler`` config (checked)."""
        return FlowSchedule.from_config(config).to_config()

    @property
    def init_noise_sigma(self) -> float:
        """1: flow-matching pipelines start from unit noise x_1 = eps."""
        return 1.0

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """The network input is the pipeline's sample x_t itself."""
        return sample

    def scale_noise(self, sample: Tensor, timestep: float | Tensor, noise: Tensor) -> Tensor:
        """Flow matching's forward process x_t = (1 - t) x0 + t eps at a timestep T t of this grid (the start
        of SD3's img2img, after ``set_begin_index``); ``timestep``: one, or one per sample."""
        t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1) / self.config.num_train_timesteps
        t = t.to(sample.device).reshape(-1, *([1] * (sample.ndim - 1)))
        return ((1 - t) * sample.to(torch.float64) + t * noise.to(sample.device, torch.float64)).to(sample.dtype)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """The grid for ``num_inference_steps`` or the given flow times ``sigmas``; resets the state.

        The flow-matching default grid (no grid in the config, or ``grid`` of family "flow" without lambdas) and
        given ``sigmas`` are FlowMatchEulerDiscreteScheduler's, number for number: its float32 times (shifted by
        its ``shift`` or the pipeline's ``mu``) as sigma = t / (1 - t), and its float32 network timesteps, so
        lambda = 0 gives the stock run to float32 rounding (a timestep one float32 step off moves a transformer's
        time embedding by ~6e-5). A fixed grid (lambdas, or explicit ``sigmas``) stays: FluxPipeline's default
        ``sigmas=linspace(1, 1/N, N)``, passed on every call, then says only N = num_inference_steps; other
        given sigmas must be that grid."""
        if timesteps is not None:
            raise ValueError("pass sigmas= (flow times t in (0, 1]); custom timesteps= are not supported")
        self.schedule = self.schedule.with_mu(mu)
        given = None if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
        if self.config.sigmas is not None or self.config.lambdas is not None:
            if given is not None and _is_pipeline_default(given):
                num_inference_steps, given = len(given), None
            grid = None if given is None else self.schedule.schedule.sigmas(len(given), mu, times=given)
            super().set_timesteps(None if grid is not None else num_inference_steps, device, grid)
            return
        if given is None and self.grid_spec is not None and self.grid_spec.family != "flow":
            super().set_timesteps(num_inference_steps, device)
            return
        if given is None and num_inference_steps is None:
            num_inference_steps = getattr(self.grid_spec, "steps", None)
            if num_inference_steps is None:
                raise ValueError("this scheduler has no grid: pass num_inference_steps")
        if self.schedule.schedule.use_dynamic_shifting and mu is None:
            raise ValueError("this schedule uses dynamic shifting: pass mu (FlowSchedule.mu(image_seq_len))")
        stock = FlowMatchEulerDiscreteScheduler.from_config(self.schedule.schedule.to_config())
        stock.set_timesteps(None if given is not None else num_inference_steps, sigmas=sigmas, mu=mu)
        super().set_timesteps(None, device, flow_time_to_sigma(stock.sigmas.to(torch.float64)))
        steps = len(self.sigmas) - 1
        at = [self.ode_solver.eval_index(k, steps) for k in range(self.ode_solver.nfe(steps))]
        self.timesteps = stock.timesteps[at].to(device=device, dtype=torch.float32)

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> Any:
        """One evaluation's update on the pipeline's x_t with the velocity ``model_output``."""
        k = self._k_checked(timestep)
        sigma = self._eval_sigmas[k].to(sample.device)
        nxt = self._eval_sigmas[k + 1] if k + 1 < len(self._eval_sigmas) else self.sigmas[-1]
        self._scaled = True  # the pipeline feeds the network x_t: nothing to scale
        # x = (1 + sigma) x_t; the pipeline's starting unit noise n is x = sigma_0 n, as in dode.sample
        # (the same at t = 1, and a grid from a finite sigma_0 starts where dode's sampler does).
        scale = sigma if self._state is None and self._begin == 0 else 1 + sigma
        out = super().step(model_output, timestep, sample.to(torch.float64) * scale, generator)
        prev = (out.prev_sample / (1 + nxt.to(sample.device))).to(sample.dtype)
        if not return_dict:
            return (prev,)
        return type(out)(prev_sample=prev, pred_original_sample=out.pred_original_sample.to(sample.dtype))

    def _check_grid(self, sigmas: Tensor) -> None:
        super()._check_grid(sigmas)
        check_flow_start(self.config.solver, sigmas)

    def _denoised(self, model_output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """The velocity as D = x_t - t v, through the one flow adapter (FlowDenoiser)."""
        return self.schedule.denoised(model_output.to(x.device), x, sigma.expand(len(x)))


__all__ = ["FlowSchedulerMixin"]
