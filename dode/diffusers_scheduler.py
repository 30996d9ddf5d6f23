"""DODEScheduler: dode's sigma-space solvers and distilled lambdas as a drop-in diffusers scheduler.

Works inside stock pipelines that honour ``init_noise_sigma`` and ``scale_model_input`` (the Stable
Diffusion and SDXL families, txt2img, img2img and inpainting): the sample lives in sigma space
(x = x0 + sigma n, Karras et al., 2022), the network sees x / sqrt(sigma^2 + 1) at the fractional
training timestep of sigma, and every ``step`` converts the network output to D, applies the D-ODE
correction (Kim et al., 2024, eq. 9) and calls the pure solver update (``dode.sampling.dode_step``,
the sampler's own). Diffusers schedulers are stateful, dode's solvers are pure: the ``SolverState``
lives here, reset by ``set_timesteps``.

img2img / inpainting (strength < 1): the pipeline calls ``set_begin_index(t_start * order)`` and
``add_noise(x0, n, t)`` = x0 + sigma(t) n; the solver then runs on the rest of the grid,
sigmas[s:], from that state, with the lambdas of the remaining evaluations, exactly as
``dode.sample(den, x_s / sigma_s, sigmas[s:], solver, lambdas[k_s:])``.

Pipelines that rebuild their scheduler from its config (``DDIMPipeline`` makes a DDIMScheduler) drop
the lambdas: diffusers logs "The config attributes {... 'lambdas': ...} were passed to DDIMScheduler,
but are not expected and will be ignored" and nothing here runs. ``DODEPipeline`` is the loop for
unconditional UNets, and it recovers the DODEScheduler from such a rebuilt scheduler's config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # the name pipelines look up on load
from diffusers.utils import BaseOutput

from .correction import CORRECTIONS, Lambdas
from .diffusers_flow import FlowSchedulerMixin
from .grids import GridSpec
from .models.flow import is_flow_config
from .models.vp import PREDICTION_TYPES, VPDenoiser
from .sampling import dode_step
from .schedules import check_sigmas, sigma_at
from .solvers import get_solver
from .store.lambdas import load_lambdas
from .types import Evaluation, SolverState, Tensor

TRAINING_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
)

WRONG_PIPELINE = (
    "DODEScheduler.step was called without scale_model_input for this evaluation: the pipeline (e.g. "
    "DDPMPipeline) feeds the network unscaled samples and ignores init_noise_sigma, which gives wrong images "
    "with a sigma-space scheduler. Sample with dode.diffusers_pipeline.DODEPipeline(unet=..., scheduler=...) "
    "for an unconditional UNet2DModel, or with a pipeline that calls scheduler.scale_model_input "
    "(the Stable Diffusion family)"
)


@dataclass
class DODESchedulerOutput(BaseOutput):
    """prev_sample: the state after the update; pred_original_sample: the corrected D~ it used."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _grid_for(grid: str | GridSpec | dict[str, Any], solver: str, nfe: int | None) -> GridSpec:
    """The grid for ``solver``: a family (name, spec or dict) at the steps that make ``nfe`` evaluations,
    or an explicit grid as given (``nfe``, if passed, must be what the solver makes on it)."""
    if grid == "explicit":
        raise ValueError("grid='explicit' needs its sigmas: pass grid=GridSpec.explicit(sigmas)")
    spec = (
        grid
        if isinstance(grid, GridSpec)
        else GridSpec(**grid)
        if isinstance(grid, dict)
        else GridSpec(grid, 1)
    )
    if spec.family == "explicit":
        made = get_solver(solver).nfe(spec.steps)
        if nfe is not None and nfe != made:
            raise ValueError(
                f"{solver!r} makes {made} evaluations on this {spec.steps}-step explicit grid, "
                f"not nfe={nfe}; drop nfe="
            )
        return spec
    if nfe is None:
        raise ValueError("name nfe= (the network evaluations to distil or sample with) for a grid family")
    return replace(spec, steps=GridSpec.for_nfe(spec.family, solver, nfe).steps)


class DODEScheduler(SchedulerMixin, ConfigMixin):
    """A dode solver (``dode.SOLVERS``) with D-ODE lambdas, one per network evaluation.

    Config: the training schedule (DDPM betas, ``prediction_type``), ``solver``, the grid as either
    explicit ``sigmas`` (decreasing, ending in 0; how distilled lambdas are shipped) or a ``grid``
    (``dode.grids.GridSpec`` dict, resolved against the training schedule), ``correction`` and the
    ``lambdas`` (None: the base solver). ``timesteps`` holds one fractional training timestep per
    network evaluation (Heun: 2N - 1), and ``order`` is evaluations per step, as pipelines expect.
    An explicit grid (``sigmas``, a learned ``Lambdas.sigmas``, or ``grid`` of family "explicit") is
    sampled on exactly as given and round-trips through ``save_pretrained``/``from_pretrained``.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        solver: str = "euler",
        grid: dict[str, Any] | None = None,
        sigmas: Sequence[float] | None = None,
        correction: str = "data",
        lambdas: Sequence[float] | None = None,
        artifact_id: str | None = None,
    ) -> None:
        self._init_dode(solver, correction, grid, sigmas, lambdas)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}"
            )
        ddpm = DDPMScheduler(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas_cumprod = ddpm.alphas_cumprod
        # The schedule half of the VP adapter: sigma table, sigma -> fractional timestep.
        self.schedule = VPDenoiser(None, self.alphas_cumprod, prediction_type)
        if grid is not None or sigmas is not None:
            self.set_timesteps()

    def _init_dode(self, solver: str, correction: str, grid: Any, sigmas: Any, lambdas: Any) -> None:
        """The solver, checked D-ODE options and grid spec, and no grid yet (any flavour of schedule)."""
        self.ode_solver = get_solver(solver)
        if correction not in CORRECTIONS:
            raise ValueError(f"unknown correction {correction!r}; choose one of {list(CORRECTIONS)}")
        if grid is not None and sigmas is not None:
            raise ValueError("pass either grid (a GridSpec dict) or explicit sigmas, not both")
        if lambdas is not None and grid is None and sigmas is None:
            raise ValueError("lambdas need the grid they were fitted on: pass sigmas=lambdas.sigmas or grid=")
        self.grid_spec = GridSpec(**grid) if grid is not None else None
        self.timesteps: Tensor | None = None
        self.sigmas: Tensor | None = None
        self.num_inference_steps: int | None = None

    # ---- construction from pipelines, weights and the registry ------------------------------------

    @classmethod
    def from_scheduler(
        cls,
        scheduler: SchedulerMixin | dict[str, Any],
        *,
        solver: str | None = None,
        nfe: int | None = None,
        grid: str | GridSpec | dict[str, Any] | None = None,
        lambdas: Lambdas | Sequence[float] | None = None,
        correction: str | None = None,
        artifact_id: str | None = None,
    ) -> DODEScheduler:
        """A DODEScheduler on the training schedule of a DDPM-style scheduler (or its config).

        With ``lambdas`` a ``dode.Lambdas``, solver, grid and correction come from it (the grid is
        ``lambdas.sigmas`` exactly, learned or not). Otherwise name the ``solver`` and ``nfe`` (and
        ``grid``: a family name, a ``GridSpec`` or its dict; ``GridSpec.explicit(sigmas)`` for given
        sigmas); plain lambda values then apply on that grid.
        """
        base, kind = dict(getattr(scheduler, "config", scheduler)), cls
        if is_flow_config(base):  # FlowMatchEulerDiscreteScheduler: SD3, FLUX and other flow-matching models
            kind, training, grid = DODEFlowScheduler, DODEFlowScheduler.training_config(base), grid or "flow"
        elif "beta_schedule" not in base:
            raise ValueError(
                f"{base.get('_class_name', 'this scheduler')} has no DDPM training schedule (beta_schedule); "
                "pass the scheduler of a pipeline trained on discrete DDPM timesteps"
            )
        elif base.get("rescale_betas_zero_snr"):
            raise ValueError(
                "zero-terminal-SNR schedules have sigma_max = inf; DODEScheduler needs a finite sigma_max"
            )
        else:
            training, grid = {key: base[key] for key in TRAINING_KEYS if key in base}, grid or "karras"
        if isinstance(lambdas, Lambdas):
            for name, given, fitted in (
                ("solver", solver, lambdas.solver),
                ("nfe", nfe, lambdas.nfe),
                ("correction", correction, lambdas.correction),
            ):
                if given is not None and given != fitted:
                    raise ValueError(
                        f"{name}={given!r} but the lambdas were fitted with {name}={fitted!r}; drop {name}="
                    )
            return kind(
                **training,
                solver=lambdas.solver,
                sigmas=list(lambdas.sigmas),
                correction=lambdas.correction,
                lambdas=list(lambdas.values),
                artifact_id=artifact_id,
            )
        if solver is None:
            raise ValueError("name solver= and nfe= (or pass lambdas=dode.Lambdas, which carries both)")
        spec = _grid_for(grid, solver, nfe)
        placed = {"sigmas": list(spec.values)} if spec.family == "explicit" else {"grid": spec.to_dict()}
        values = None if lambdas is None else [float(v) for v in lambdas]
        return kind(
            **training,
            solver=solver,
            **placed,
            correction=correction or "data",
            lambdas=values,
            artifact_id=artifact_id,
        )

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """diffusers' from_config; a flow-matching config (one a ``DODEFlowScheduler`` saved) builds that
        class, so ``DODEScheduler.from_pretrained`` loads every folder a DODEScheduler wrote."""
        if cls is DODEScheduler and is_flow_config(dict(getattr(config, "config", config) or {})):
            return DODEFlowScheduler.from_config(config, return_unused_kwargs, **kwargs)
        return super().from_config(config, return_unused_kwargs, **kwargs)

    @classmethod
    def from_artifact(
        cls, registry: Any, id_or_prefix: str, base_scheduler_config: SchedulerMixin | dict[str, Any]
    ) -> DODEScheduler:
        """The scheduler for a registered ``Lambdas`` (registry kind "lambdas") on a pipeline's schedule."""
        art = registry.get(id_or_prefix)
        lam = load_lambdas(registry, art)
        return cls.from_scheduler(base_scheduler_config, lambdas=lam, artifact_id=art.id)

    # ---- the diffusers scheduler protocol -------------------------------------------------------

    @property
    def order(self) -> int:
        """Network evaluations per solver step (pipelines use it for progress bars)."""
        return self.ode_solver.evals_per_step

    @property
    def nfe(self) -> int:
        if self.sigmas is None:
            raise ValueError("call set_timesteps first")
        return self.ode_solver.nfe(len(self.sigmas) - 1)

    @property
    def init_noise_sigma(self) -> float:
        """sigma_0: the pipeline's unit noise times this is the starting state x_T = sigma_0 n."""
        if self.sigmas is None:
            raise ValueError("call set_timesteps first")
        return float(self.sigmas[0])

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Fix the grid (``num_inference_steps`` solver steps; Heun: 2N - 1 evaluations); reset the state.

        ``sigmas`` (what pipelines pass on from ``pipe(..., sigmas=...)``) samples on exactly these noise
        levels (a trailing 0 is appended if missing); with lambdas they must be the fitted grid.
        """
        sigmas = self._grid(num_inference_steps, sigmas)
        self._check_grid(sigmas)
        steps = len(sigmas) - 1
        eval_sigmas = torch.stack(
            [sigmas[self.ode_solver.eval_index(k, steps)] for k in range(self.ode_solver.nfe(steps))]
        )
        self.sigmas, self.num_inference_steps, self._eval_sigmas = sigmas, steps, eval_sigmas
        self.timesteps = self.schedule.sigma_to_t(eval_sigmas).to(device=device, dtype=torch.float32)
        self._state: SolverState | None = None
        self._basis_prev: Tensor | None = None
        self._begin = self._k = 0
        self._scaled = False

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at evaluation ``begin_index`` (img2img / inpainting: ``t_start * order``), which must
        begin a solver step; the solver then integrates the remaining grid from the pipeline's state."""
        nfe = len(self._timesteps_checked())
        if self._state is not None or self._k != self._begin:
            raise ValueError(
                "set_begin_index must come before the first step; call set_timesteps to start over"
            )
        if not 0 <= begin_index < nfe or begin_index % self.order:
            raise ValueError(
                f"begin_index {begin_index} does not start a solver step of this {nfe}-evaluation run; use a "
                f"multiple of order={self.order} below {nfe}"
            )
        self._begin = self._k = int(begin_index)

    @property
    def begin_index(self) -> int | None:
        """The evaluation the run starts at (0 unless ``set_begin_index`` moved it)."""
        return None if self.timesteps is None else self._begin

    @property
    def step_index(self) -> int | None:
        """The index in ``timesteps`` of the coming evaluation."""
        return None if self.timesteps is None else self._k

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: float | Tensor) -> Tensor:
        """The forward process in sigma space, x = x0 + sigma(t) n (img2img's and inpainting's start).

        A timestep of this grid gets that evaluation's sigma exactly; any other training timestep gets the
        training schedule's sigma (log-linear between integer steps). ``timesteps``: one per sample, or one.
        """
        sigma = self._sigma_of(torch.as_tensor(timesteps).reshape(-1))
        if len(sigma) not in (1, len(original_samples)):
            raise ValueError(
                f"pass one timestep or one per sample ({len(original_samples)}), got {len(sigma)}"
            )
        sigma = sigma.to(original_samples.device).reshape(-1, *([1] * (original_samples.ndim - 1)))
        noisy = original_samples.to(torch.float64) + sigma * noise.to(original_samples.device, torch.float64)
        return noisy.to(original_samples.dtype)

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """The network input x / sqrt(sigma^2 + 1) of the coming evaluation (VP scaling)."""
        sigma = self._eval_sigmas[self._k_checked(timestep)]
        self._scaled = True
        c_in = 1 / (sigma**2 + 1).sqrt()
        return (sample.to(torch.float64) * c_in.to(sample.device)).to(sample.dtype)

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DODESchedulerOutput | tuple[Tensor]:
        """One network evaluation's update: output -> D, D-ODE correction, solver advance.

        ``model_output`` may carry a learned variance (2C channels; its first half is used).
        ``generator`` is accepted for pipeline compatibility and unused (the ODE is deterministic).
        """
        k = self._k_checked(timestep)
        if not self._scaled:
            raise ValueError(WRONG_PIPELINE)
        # The run's grid: sigmas[s:] from the evaluation it began at (s = 0 unless set_begin_index moved it).
        grid = self.sigmas[self.ode_solver.eval_index(self._begin, self.num_inference_steps) :].to(
            sample.device
        )
        sigma, x = self._eval_sigmas[k].to(sample.device), sample.to(torch.float64)

        ev = Evaluation(x, sigma, self._denoised(model_output, x, sigma))

        # D-ODE correction and the pure solver update; the state is the pipeline's sample.
        if self._state is None:
            self._state = SolverState(x=x)
            self._basis_prev = x / sigma if self.config.correction == "noise" else None  # eps_{-1} := x_T
        lam = self.config.lambdas[k] if self.config.lambdas is not None else 0.0
        self._state, self._basis_prev, denoised = dode_step(
            self.ode_solver,
            grid,
            replace(self._state, x=x),
            ev,
            self._basis_prev,
            lam,
            self.config.correction,
        )
        self._k, self._scaled = k + 1, False

        prev = self._state.x.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return DODESchedulerOutput(prev_sample=prev, pred_original_sample=denoised.to(sample.dtype))

    def _denoised(self, model_output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """The network output as D, through the one VP adapter (VPDenoiser), so the conversions cannot drift."""
        replay = VPDenoiser(lambda x_vp, t: model_output, self.alphas_cumprod, self.config.prediction_type)
        return replay(x, sigma.expand(len(x)))

    # ---- checks -------------------------------------------------------------------------------

    def _grid(self, num_inference_steps: int | None, given: Sequence[float] | Tensor | None) -> Tensor:
        """The grid to sample on: ``given`` sigmas, else the configured explicit grid or grid family
        (Karras by default) at ``num_inference_steps``; a fixed grid (explicit, or with lambdas) stays."""
        cfg = self.config
        fixed = (
            cfg.sigmas is not None
            or cfg.lambdas is not None
            or getattr(self.grid_spec, "family", "") == "explicit"
        )
        if given is not None:
            grid = torch.as_tensor(given, dtype=torch.float64).detach().cpu().reshape(-1)
            grid = grid if len(grid) and grid[-1] == 0 else torch.cat([grid, grid.new_zeros(1)])
            if fixed and not (
                len(grid) == len(mine := self._grid(None, None)) and torch.allclose(grid, mine, rtol=1e-9)
            ):
                raise ValueError(
                    f"this scheduler samples on its fixed grid {mine.tolist()}; drop sigmas= from the call"
                )
            return grid
        if cfg.sigmas is not None:
            grid = torch.tensor(cfg.sigmas, dtype=torch.float64)
        elif self.grid_spec is None and num_inference_steps is None:
            raise ValueError("this DODEScheduler has no grid: pass num_inference_steps")
        else:
            spec = self.grid_spec or GridSpec("karras", num_inference_steps)
            if num_inference_steps is not None and not fixed:
                spec = replace(spec, steps=num_inference_steps)
            grid = spec.sigmas(self.schedule)
        steps = len(grid) - 1
        if fixed and num_inference_steps is not None and num_inference_steps != steps:
            raise ValueError(
                f"this scheduler's grid is fixed at {steps} steps ({self.ode_solver.nfe(steps)} network "
                f"evaluations with {cfg.solver!r}"
                f"{', as its lambdas were distilled' if cfg.lambdas is not None else ''}); "
                f"call the pipeline with num_inference_steps={steps}"
            )
        return grid

    def _timesteps_checked(self) -> Tensor:
        if self.timesteps is None:
            raise ValueError("call set_timesteps before sampling")
        return self.timesteps

    def _sigma_of(self, timesteps: Tensor) -> Tensor:
        """sigma for each timestep: this grid's evaluation sigma where it is one of ``self.timesteps``,
        the training schedule's otherwise."""
        t = timesteps.detach().to("cpu", torch.float64)
        sigma = sigma_at(self.schedule.sigmas_train, t)
        if self.timesteps is not None:
            gap = (t[:, None] - self.timesteps.detach().to("cpu", torch.float64)[None, :]).abs()
            near, index = gap.min(dim=1)
            sigma = torch.where(near < 1e-3, self._eval_sigmas[index], sigma)
        return sigma

    def _k_checked(self, timestep: float | Tensor | None) -> int:
        """The index of the coming evaluation, checked against the timestep the pipeline passes."""
        self._timesteps_checked()
        k = self._k
        if k >= len(self.timesteps):
            raise ValueError(
                f"all {len(self.timesteps)} evaluations are done; call set_timesteps to sample again"
            )
        if timestep is not None and abs(float(timestep) - float(self.timesteps[k])) > 1e-3:
            raise ValueError(
                f"evaluation {k} expects timestep {float(self.timesteps[k]):.4f}, got {float(timestep):.4f}; "
                "iterate over scheduler.timesteps in order, once each"
            )
        return k

    def _check_grid(self, sigmas: Tensor) -> None:
        """The grid must be valid, inside the training range, and match the number of lambdas."""
        check_sigmas(sigmas)
        lo, hi = self.schedule.sigma_min, self.schedule.sigma_max
        if sigmas[0] > hi * (1 + 1e-6) or sigmas[-2] < lo * (1 - 1e-6):
            raise ValueError(
                f"the grid spans sigma {float(sigmas[-2]):.4g}..{float(sigmas[0]):.4g}, outside this "
                f"training schedule's {lo:.4g}..{hi:.4g}; lambdas fitted for another model's schedule"
            )
        lambdas = self.config.lambdas
        nfe = self.ode_solver.nfe(len(sigmas) - 1)
        if lambdas is not None and len(lambdas) != nfe:
            raise ValueError(
                f"{len(lambdas)} lambdas, but {self.config.solver!r} makes {nfe} evaluations on a "
                f"{len(sigmas) - 1}-step grid; pass one lambda per network evaluation"
            )


class DODEFlowScheduler(FlowSchedulerMixin, DODEScheduler):
    """DODEScheduler for flow-matching pipelines (SD3, FLUX), in FlowMatchEulerDiscreteScheduler's place;
    ``DODEScheduler.from_scheduler`` builds it from a flow-matching scheduler (``dode.diffusers_flow``)."""


__all__ = ["WRONG_PIPELINE", "DODEFlowScheduler", "DODEScheduler", "DODESchedulerOutput", "SchedulerMixin"]
