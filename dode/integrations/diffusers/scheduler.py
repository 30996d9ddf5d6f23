"""DODEScheduler: dode's sigma-space solvers and distilled lambdas as a drop-in diffusers scheduler.

Works inside stock pipelines that honour ``init_noise_sigma`` and ``scale_model_input`` (the Stable
Diffusion and SDXL families, txt2img, img2img and inpainting): the sample lives in sigma space
(x = x0 + sigma n, Karras et al., 2022), the network sees x / sqrt(sigma^2 + 1) at the fractional
training timestep of sigma, and every ``step`` converts the network output to D, applies the D-ODE
correction (Kim et al., 2024, eq. 9) and calls the pure solver update (``dode.core.sampling.dode_step``,
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

from dode.core.correction import CORRECTIONS, Lambdas, lambda_values
from dode.core.fitted import fitted_grid, same_grid
from dode.core.gaussian import FirstStep
from dode.core.grids import GridSpec
from dode.core.sampling import dode_step, network_calls
from dode.core.schedules import check_sigmas, sigma_at
from dode.core.solvers import get_solver
from dode.core.types import Evaluation, SolverState, Tensor
from dode.distillation.config import STUDENT_SOLVER
from dode.integrations.diffusers.flow import FlowSchedulerMixin
from dode.integrations.diffusers.stock import (
    FLOW_STOCK,
    StockGrid,
    is_stock,
    stock_class_name,
    stock_grid,
    stock_solver,
    stock_solvers,
)
from dode.models.flow import is_flow_config
from dode.models.vp import PREDICTION_TYPES, VPDenoiser
from dode.store.lambdas import load_lambdas

TRAINING_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
)
SAMPLER_KEYS = frozenset({"solver", "grid", "sigmas", "base_scheduler", "initial_noise", "first_step"})  # own config
SWAP_KEYS = ("lambdas", "nfe", "correction", "artifact_id")  # from_config's kwargs that go to from_scheduler
INITIAL_NOISE = ("sigma", "vp")  # x_T = sigma_0 n (dode.sample's), or sqrt(sigma_0^2 + 1) n (unit noise in VP space)

WRONG_PIPELINE = (
    "DODEScheduler.step was called without scale_model_input for this evaluation: the pipeline (e.g. "
    "DDPMPipeline) feeds the network unscaled samples and ignores init_noise_sigma, which gives wrong images "
    "with a sigma-space scheduler. Sample with dode.integrations.diffusers.pipeline.DODEPipeline(unet=..., scheduler=...) "
    "for an unconditional UNet2DModel, or with a pipeline that calls scheduler.scale_model_input "
    "(the Stable Diffusion family)"
)


@dataclass
class DODESchedulerOutput(BaseOutput):
    """prev_sample: the state after the update; pred_original_sample: the corrected D~ it used."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _is_grid(grid: str | GridSpec | dict[str, Any], lambdas: Lambdas) -> bool:
    """Whether ``grid`` is the lambdas' own: explicit, with their sigmas (a family's sigmas depend on the schedule,
    so a family name is never taken for a fitted grid)."""
    spec = grid if isinstance(grid, GridSpec) else GridSpec(**grid) if isinstance(grid, dict) else None
    return (spec is not None and spec.family == "explicit"
            and same_grid(torch.tensor(spec.values, dtype=torch.float64), fitted_grid(lambdas)))


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
    (``dode.core.grids.GridSpec`` dict, resolved against the training schedule), ``correction`` and the
    ``lambdas`` (None: the base solver). ``timesteps`` holds one fractional training timestep per
    network evaluation (Heun: 2N - 1), and ``order`` is evaluations per step, as pipelines expect.
    An explicit grid (``sigmas``, a learned ``Lambdas.sigmas``, or ``grid`` of family "explicit") is
    sampled on exactly as given and round-trips through ``save_pretrained``/``from_pretrained``.

    ``first_step`` (``dode.core.gaussian.FirstStep.to_dict()``, set from lambdas fitted with one) makes the first
    evaluation at sigma_0 without the network: ``timesteps`` then lists the network calls only and the
    pipeline's first UNet call is at the first evaluated sigma. The pipeline's latents are still at sigma_0
    then: the first ``scale_model_input`` takes the Gaussian's step on its input (row by row, so a CFG-doubled
    batch works), and the first ``step`` takes it on the latents and continues from there.
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
        solver: str = STUDENT_SOLVER,
        grid: dict[str, Any] | None = None,
        sigmas: Sequence[float] | None = None,
        correction: str = "data",
        lambdas: Sequence[float] | None = None,
        artifact_id: str | None = None,
        base_scheduler: dict[str, Any] | None = None,
        initial_noise: str = "sigma",
        first_step: dict[str, Any] | None = None,
    ) -> None:
        self._init_dode(solver, correction, grid, sigmas, lambdas, base_scheduler, first_step)
        if self.first is not None and (base_scheduler is not None or initial_noise != "sigma"):
            raise ValueError("an analytic first step starts at sigma_0 * n on a dode grid: drop base_scheduler and "
                             "initial_noise")
        if initial_noise not in INITIAL_NOISE:
            raise ValueError(f"unknown initial_noise {initial_noise!r}; choose one of {list(INITIAL_NOISE)}")
        if base_scheduler is not None and (grid is not None or sigmas is not None):
            raise ValueError("pass base_scheduler (sample on its grid) or a grid / sigmas, not both")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}"
            )
        ddpm = DDPMScheduler(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas_cumprod = ddpm.alphas_cumprod
        # The schedule half of the VP adapter: sigma table, sigma -> fractional timestep.
        self.schedule = VPDenoiser(None, self.alphas_cumprod, prediction_type)
        if grid is not None or sigmas is not None or (base_scheduler is not None and lambdas is not None):
            self.set_timesteps()

    def _init_dode(self, solver: str, correction: str, grid: Any, sigmas: Any, lambdas: Any,
                   base_scheduler: dict[str, Any] | None = None, first_step: dict[str, Any] | None = None) -> None:
        """The solver, checked D-ODE options, grid spec and first step, and no grid yet (any flavour of schedule)."""
        self.ode_solver = get_solver(solver)
        self.first = FirstStep.from_dict(first_step)
        if correction not in CORRECTIONS:
            raise ValueError(f"unknown correction {correction!r}; choose one of {list(CORRECTIONS)}")
        if grid is not None and sigmas is not None:
            raise ValueError("pass either grid (a GridSpec dict) or explicit sigmas, not both")
        if lambdas is not None and grid is None and sigmas is None and base_scheduler is None:
            raise ValueError("lambdas need the grid they were fitted on: pass sigmas=lambdas.sigmas or grid=")
        if lambdas is not None:  # a config read from a folder is data: NaN, inf or 1e300 would give NaN images
            lambda_values(lambdas, "lambdas")  # finite and bounded, as stored lambdas
        self.grid_spec = GridSpec(**grid) if grid is not None else None
        self.timesteps: Tensor | None = None
        self.sigmas: Tensor | None = None
        self.num_inference_steps: int | None = None
        self._stock: StockGrid | None = None

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
        ``lambdas.sigmas`` exactly, learned or not). Without ``solver`` and ``grid``, a stock diffusers scheduler
        (Euler, Heun, DPM-Solver++, UniPC, DDIM: ``dode.integrations.diffusers.stock``) is reproduced: its solver, its grid
        at the pipeline's ``num_inference_steps``, its network timesteps and initial noise, so lambda = 0 gives
        what it gives; a flow-matching Euler scheduler too (solver "euler" on the pipeline's grid; with plain
        lambda values, the flow grid of one evaluation per value). Otherwise name the ``solver`` and ``nfe`` (and ``grid``: a family name, default
        "karras", a ``GridSpec`` or its dict; ``GridSpec.explicit(sigmas)`` for given sigmas); plain lambda
        values then apply on that grid.
        """
        base, kind = dict(getattr(scheduler, "config", scheduler)), cls
        if hasattr(scheduler, "config"):  # a scheduler's config names its class only once saved
            base.setdefault("_class_name", type(scheduler).__name__)
        if is_flow_config(base):  # FlowMatchEulerDiscreteScheduler: SD3, FLUX and other flow-matching models
            kind, training = DODEFlowScheduler, DODEFlowScheduler.training_config(base)
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
            training = {key: base[key] for key in TRAINING_KEYS if key in base}
        if isinstance(lambdas, Lambdas):
            calls = network_calls(lambdas.solver, len(lambdas.sigmas) - 1, lambdas.first)
            for name, given, fitted in (
                ("solver", solver, lambdas.solver),
                ("nfe", nfe, calls),
                ("correction", correction, lambdas.correction),
            ):
                if given is not None and given != fitted:
                    raise ValueError(
                        f"{name}={given!r} but the lambdas were fitted with {name}={fitted!r}; drop {name}="
                    )
            if grid is not None and not _is_grid(grid, lambdas):
                raise ValueError("grid= differs from the grid the lambdas were fitted on; drop grid= (the lambdas "
                                 "imply theirs) or pass their own: grid=GridSpec.explicit(lambdas.sigmas)")
            first = {"first_step": dict(lambdas.first_step)} if lambdas.first_step else {}
            if first and kind is not cls:
                raise ValueError("lambdas with an analytic first step are not supported in flow-matching pipelines "
                                 "yet; distill them with first_step='network'")
            return kind(
                **training,
                solver=lambdas.solver,
                sigmas=list(lambdas.sigmas),
                correction=lambdas.correction,
                lambdas=list(lambdas.values),
                artifact_id=artifact_id,
                **first,
            )
        values = None if lambdas is None else [float(v) for v in lambdas]
        if kind is cls and solver is None and grid is None and is_stock(base):
            stock = cls(**training, solver=stock_solver(base), correction=correction or "data", lambdas=values,
                        artifact_id=artifact_id, base_scheduler=base)
            if nfe is not None and values is None:
                stock.set_timesteps(GridSpec.for_nfe("karras", stock.config.solver, nfe).steps)
            return stock
        if kind is DODEFlowScheduler and solver is None and grid is None:  # flow matching's Euler: its own grid
            solver = stock_solvers(FLOW_STOCK)[None]  # the solver whose Solver.stock names FlowMatchEuler
            if values is None and nfe is None:  # the pipeline's grid at its num_inference_steps (and mu)
                return kind(**training, solver=solver, correction=correction or "data", artifact_id=artifact_id)
        if solver is None:
            raise ValueError("name solver= and nfe= (or pass lambdas=dode.Lambdas, which carries both, or a stock "
                             "Euler / Heun / DPM-Solver++ / UniPC / DDIM / FlowMatchEuler scheduler to reproduce)")
        family = "flow" if kind is DODEFlowScheduler else "karras"  # the default grid family
        nfe = len(values) if nfe is None and values is not None else nfe
        spec = _grid_for(family if grid is None else grid, solver, nfe)
        placed = {"sigmas": list(spec.values)} if spec.family == "explicit" else {"grid": spec.to_dict()}
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
        """diffusers' from_config, and the swap idiom ``pipe.scheduler = DODEScheduler.from_config(pipe.scheduler.config)``.

        A stock scheduler's config (``dode.integrations.diffusers.stock``: Euler, Heun, DPM-Solver++, UniPC, DDIM,
        flow matching's Euler) is reproduced at lambda = 0 exactly as ``from_scheduler`` does; ``kwargs`` then
        take ``from_scheduler``'s ``lambdas``, ``nfe``, ``correction``, ``artifact_id`` and override the stock
        config's keys. A DODEScheduler config, or any config with ``kwargs`` naming the sampler (``solver``,
        ``grid``, ``sigmas``, ...), is this class's own (a flow-matching one builds ``DODEFlowScheduler``)."""
        source = dict(getattr(config, "config", config) or {})
        stock = None if "solver" in source or SAMPLER_KEYS & set(kwargs) else stock_class_name(source)
        if stock is not None:
            swap = {key: kwargs.pop(key) for key in SWAP_KEYS if key in kwargs}
            built = cls.from_scheduler({**source, **kwargs, "_class_name": stock}, **swap)
            return (built, {}) if return_unused_kwargs else built
        if cls is DODEScheduler and is_flow_config(source):
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
        """Network calls per sample (an analytic first evaluation is not one)."""
        if self.sigmas is None:
            raise ValueError("call set_timesteps first")
        return network_calls(self.config.solver, len(self.sigmas) - 1, self.first)

    @property
    def init_noise_sigma(self) -> float:
        """The pipeline's unit noise times this is the starting state: sigma_0 (``initial_noise`` "sigma",
        dode.sample's x_T = sigma_0 n), or sqrt(sigma_0^2 + 1) ("vp": unit noise in VP space, the start of
        diffusers' DPM-Solver, UniPC and DDIM; a stock scheduler's own when built from one)."""
        if self.sigmas is None:
            raise ValueError("call set_timesteps first")
        initial = self._stock.initial_noise if self._stock is not None else self.config.initial_noise
        sigma = float(self.sigmas[0])
        return sigma if initial == "sigma" else (sigma**2 + 1) ** 0.5

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
        self._stock = self._stock_grid(num_inference_steps) if sigmas is None else None
        sigmas = self._stock.sigmas if self._stock is not None else self._grid(num_inference_steps, sigmas)
        self._check_grid(sigmas)
        # The solver's grid (under a flowmap first step it starts at sigmas[1]) and its evaluations; the pipeline
        # sees those the network makes (all but an analytic first one).
        flowmap = self.first is not None and self.first.kind == "flowmap"
        solver_grid = sigmas[1:] if flowmap else sigmas
        steps = len(solver_grid) - 1
        eval_sigmas = torch.stack(
            [solver_grid[self.ode_solver.eval_index(k, steps)] for k in range(self.ode_solver.nfe(steps))]
        )
        self._skip = int(self.first is not None and self.first.kind == "analytic")
        self.sigmas, self.num_inference_steps, self._eval_sigmas = sigmas, len(sigmas) - 1, eval_sigmas
        self._solver_grid = solver_grid
        timesteps = (self._stock.timesteps if self._stock is not None
                     else self.schedule.sigma_to_t(eval_sigmas[self._skip:]))
        self.timesteps = timesteps.to(device=device, dtype=torch.float32)
        self._state: SolverState | None = None
        self._basis_prev: Tensor | None = None
        self._begin = self._k = 0
        self._scaled = False

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at evaluation ``begin_index`` (img2img / inpainting: ``t_start * order``), which must
        begin a solver step; the solver then integrates the remaining grid from the pipeline's state."""
        nfe = len(self._timesteps_checked())
        if self.first is not None and begin_index:
            raise ValueError("an analytic first step starts at sigma_0: img2img / inpainting with strength < 1 need "
                             "lambdas fitted without one")
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
        """The network input x / sqrt(sigma^2 + 1) of the coming evaluation (VP scaling); before the first
        network call of a run with an analytic first step, that step is taken here from the pipeline's
        sigma_0 latents."""
        k = self._k_checked(timestep)
        x = sample.to(torch.float64)
        if self.first is not None and self._state is None:
            x = self._first_state(sample)[0].x
        sigma = self._eval_sigmas[k + self._skip]
        self._scaled = True
        c_in = 1 / (sigma**2 + 1).sqrt()
        return (x * c_in.to(sample.device)).to(sample.dtype)

    def _first_state(self, sample: Tensor) -> tuple[SolverState, Tensor | None]:
        """The solver state and correction basis after the Gaussian's step from x = sigma_0 n (as
        ``dode.core.sampling.integrate`` takes it): ``analytic``, the closed-form evaluation at sigma_0, corrected
        and advanced by the solver; ``flowmap``, the exact flow to sigmas[1]."""
        x = sample.to(torch.float64)
        sigma0 = self.sigmas[0].to(sample.device)
        basis = x / sigma0 if self.config.correction == "noise" else None  # eps_{-1} := x_T
        if self.first.kind == "flowmap":
            return SolverState(x=self.first.gaussian.flow(x, sigma0, self._solver_grid[0].to(sample.device))), basis
        ev = Evaluation(x, sigma0, self.first.gaussian.denoise(x, sigma0))
        lam = self.config.lambdas[0] if self.config.lambdas is not None else 0.0
        state, basis, _ = dode_step(self.ode_solver, self._solver_grid.to(sample.device), SolverState(x=x), ev,
                                    basis, lam, self.config.correction)
        return state, basis

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
        e = k + self._skip  # the solver's evaluation index (an analytic first evaluation came before)
        grid = self._solver_grid[self.ode_solver.eval_index(self._begin, len(self._solver_grid) - 1) :].to(
            sample.device
        )
        if self.first is not None and self._state is None:  # the latents are at sigma_0: take the first step
            self._state, self._basis_prev = self._first_state(sample)
        x = self._state.x if self.first is not None and k == 0 else sample.to(torch.float64)
        sigma = self._eval_sigmas[e].to(sample.device)

        ev = Evaluation(x, sigma, self._denoised(model_output, x, sigma))

        # D-ODE correction and the pure solver update; the state is the pipeline's sample.
        if self._state is None:
            self._state = SolverState(x=x)
            self._basis_prev = x / sigma if self.config.correction == "noise" else None  # eps_{-1} := x_T
        lam = self.config.lambdas[e] if self.config.lambdas is not None else 0.0
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

        prev = self._state.x
        final_sigma = self._stock.final_sigma if self._stock is not None else 0.0
        if k == len(self.timesteps) - 1 and final_sigma > 0:  # DDIM's last step to final_alpha_cumprod, in x_VP
            prev = (denoised + final_sigma * (x - denoised) / sigma) / (1 + final_sigma**2) ** 0.5
        prev = prev.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return DODESchedulerOutput(prev_sample=prev, pred_original_sample=denoised.to(sample.dtype))

    def _denoised(self, model_output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """The network output as D, through the one VP adapter (VPDenoiser), so the conversions cannot drift."""
        replay = VPDenoiser(lambda x_vp, t: model_output, self.alphas_cumprod, self.config.prediction_type)
        return replay(x, sigma.expand(len(x)))

    # ---- checks -------------------------------------------------------------------------------

    def _stock_grid(self, num_inference_steps: int | None) -> StockGrid | None:
        """The base scheduler's run (``dode.integrations.diffusers.stock``) when built from a stock scheduler, else None; its
        steps are ``num_inference_steps`` or, with lambdas, the steps that make one evaluation per lambda."""
        cfg = self.config
        if cfg.get("base_scheduler") is None:
            return None
        if cfg.lambdas is None:
            if num_inference_steps is None:
                raise ValueError("pass num_inference_steps: this scheduler samples on its base scheduler's grid")
            return stock_grid(cfg.base_scheduler, num_inference_steps)
        steps = GridSpec.for_nfe("karras", cfg.solver, len(cfg.lambdas)).steps
        if num_inference_steps not in (None, steps):
            raise ValueError(f"this scheduler's grid is fixed at {steps} steps ({len(cfg.lambdas)} lambdas, one per "
                             f"network evaluation of {cfg.solver!r}); call the pipeline with num_inference_steps={steps}")
        return stock_grid(cfg.base_scheduler, steps)

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
            sigma = torch.where(near < 1e-3, self._eval_sigmas[self._skip:][index], sigma)
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
        flowmap = self.first is not None and self.first.kind == "flowmap"
        nfe = self.ode_solver.nfe(len(sigmas) - 1 - flowmap)
        if lambdas is not None and len(lambdas) != nfe:
            raise ValueError(
                f"{len(lambdas)} lambdas, but {self.config.solver!r} makes {nfe} evaluations on a "
                f"{len(sigmas) - 1}-step grid; pass one lambda per network evaluation"
            )


class DODEFlowScheduler(FlowSchedulerMixin, DODEScheduler):
    """DODEScheduler for flow-matching pipelines (SD3, FLUX), in FlowMatchEulerDiscreteScheduler's place;
    ``DODEScheduler.from_scheduler`` builds it from a flow-matching scheduler (``dode.integrations.diffusers.flow``)."""


# The public home of both classes is ``dode`` (as numpy's functions live in ``numpy``): a pipeline's save_pretrained
# records a component as [its class's module, its name], so model_index.json says ["dode", "DODEScheduler"], and
# ``import dode`` + ``DiffusionPipeline.from_pretrained(folder)`` finds the class in the installed package. The
# saved folder holds configs and weights only: nothing in it is code, nothing in it runs.
DODEScheduler.__module__ = DODEFlowScheduler.__module__ = "dode"


__all__ = ["WRONG_PIPELINE", "DODEFlowScheduler", "DODEScheduler", "DODESchedulerOutput", "SchedulerMixin"]
