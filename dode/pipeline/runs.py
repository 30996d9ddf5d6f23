"""The stage configurations: what each orchestrated stage runs, one frozen, validated object per stage.

``TeacherRun``, ``DistillRun``, ``SampleRun``, ``ScoreRun``, ``PipelineRun`` and ``PromptDistillRun`` (a diffusers
text-to-image pipeline's lambdas from prompts) hold the model, the cells and the parts the library takes (``dode.distillation.config``: ``TeacherConfig``, ``FitConfig``, ``SamplingConfig``;
``ScoringConfig`` here). Each Prefect flow takes its stage's as its one typed parameter (the UI renders it
as a form, its choices as choices), ``dode run STAGE`` derives its options from it (``dode.cli.options``;
``dode sample`` takes ``SampleRun``'s by the same names), and a deployment's parameters build it the same way:
booleans and integers are strict, a rule that spans fields lives in one validator (``TeacherConfig``'s
``check_first_step`` and ``check_budget``, ``SeededBatches``' seed range, ``generate.check_first_step``), so
bad input -- a run past a stated budget included -- is refused before any work, with one message.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints, model_validator

from dode.common.config import WHOLE_ITEMS, Config, Int, Number
from dode.core.gaussian import NETWORK
from dode.core.grids import GridSpec
from dode.core.sampling import network_calls
from dode.distillation.config import (
    FAMILY,
    FIRST_STEP,
    STUDENT_SOLVER,
    Family,
    FirstStepKind,
    FitConfig,
    ModelName,
    Solver,
)
from dode.distillation.teacher import TeacherConfig, check_official
from dode.integrations.diffusers.distill import PipelineDistillConfig
from dode.metrics.scores import check_metrics
from dode.pipeline.generate import SamplingConfig, SamplingJob, check_first_step
from dode.pipeline.sweep import Variant, plan_cells, plan_variants
from dode.store.lambdas import lambdas_artifact, load_lambdas

DEFAULT_MODEL = "mixture-smooth"
FAMILY_HELP = "grid family"


class ScoringConfig(Config):
    """What samples are scored by: ``metrics`` (auto: the model's own) against ``reference`` statistics (a
    reference-stats artifact id; default: the model's reference data)."""

    metrics: tuple[str, ...] = Field(("auto",), description="fd-digits, fd-pixels, fid, rmse, or auto")
    reference: str | None = Field(None, description="reference-stats artifact id for the Fréchet distances")

    @model_validator(mode="after")
    def _metrics(self) -> ScoringConfig:
        check_metrics(self.metrics)
        return self


def check_alignment(teacher: TeacherConfig, solvers: list[str], family: str) -> None:
    """``official`` alignment exists for the reference code's cases only (``dode.distillation.teacher.check_official``)."""
    if teacher.alignment == "official":
        check_official(solvers, family)


class TeacherRun(Config):
    """The teacher stage: the teacher of the ``steps``-step student grid of ``family``, stored for every
    solver on that grid."""

    model: ModelName = Field(DEFAULT_MODEL, description="model name (e.g. digits-ddpm), a diffusers folder or hub id")
    steps: Int = Field(5, ge=1, le=100_000, description="student grid steps the teacher serves")
    family: Family = Field(FAMILY, description=FAMILY_HELP)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)

    @model_validator(mode="after")
    def _exact(self) -> TeacherRun:
        self.teacher.check_stored()
        self.teacher.check_budget(self.steps)
        return self

    @property
    def grid(self) -> GridSpec:
        return GridSpec(self.family, self.steps)


class DistillRun(Config):
    """The distill stage: lambdas for ``solver`` at ``nfe`` network calls on a ``family`` grid, with the
    network's or an analytic first evaluation (``first_step``)."""

    model: ModelName = Field(DEFAULT_MODEL, description="model name (e.g. digits-ddpm), a diffusers folder or hub id")
    solver: Solver = Field(STUDENT_SOLVER, description="base solver")
    nfe: Int = Field(5, ge=1, le=100_000, description="network calls per sample")
    family: Family = Field(FAMILY, description=FAMILY_HELP)
    first_step: FirstStepKind = Field(
        FIRST_STEP, description="network, or analytic / flowmap: the first evaluation by a Gaussian of the model's "
        "own samples (nfe stays the network calls)")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    fit: FitConfig = Field(default_factory=FitConfig)

    @model_validator(mode="after")
    def _cell(self) -> DistillRun:
        check_calls(self.solver, self.nfe, self.family, self.first_step)
        check_alignment(self.teacher, [self.solver], self.family)
        self.teacher.check_first_step(self.first_step)
        self.teacher.check_budget(self.grid.steps)
        return self

    @property
    def grid(self) -> GridSpec:
        """The student grid on which the solver makes ``nfe`` network calls."""
        return GridSpec.for_calls(self.family, self.solver, self.nfe, self.first_step)


def check_calls(solver: str, nfe: int, family: str, first_step: str) -> None:
    """One solver at ``nfe`` network calls with ``first_step`` on a ``family`` grid."""
    if first_step == NETWORK:
        plan_cells([solver], [], {solver: [nfe]}, family)  # at least 2 calls, an exact grid
        return
    GridSpec.for_calls(family, solver, nfe, first_step)


class SampleRun(Config):
    """The sample stage (and ``dode sample``): a sampling job, base (``solver`` at ``nfe`` calls on a ``family``
    grid, or on explicit ``sigmas``, with a ``first_step`` and its ``gaussian``) or with D-ODE ``lambdas``
    (their solver, grid and first step: a solver, nfe, family or first step given with them must be theirs)."""

    model: ModelName = Field(DEFAULT_MODEL, description="model name (e.g. digits-ddpm), a diffusers folder or hub id")
    solver: Solver | None = Field(None, description=f"base solver (default {STUDENT_SOLVER}; with lambdas: theirs)")
    nfe: Int | None = Field(None, ge=1, le=100_000, description="network calls per sample (with lambdas: theirs); "
                            "with an analytic first step the grid has one step more than the calls")
    family: Family | None = Field(None, description=f"{FAMILY_HELP} (default {FAMILY}; with lambdas: theirs)")
    sigmas: tuple[Number, ...] | None = Field(None, description="an explicit grid instead of family and nfe: noise "
                                              "levels, strictly decreasing, ending in 0 (e.g. 80,10,1,0.1,0)")
    lambdas: str | None = Field(None, description="lambdas artifact id (or unique prefix): sample its solver, grid "
                                "and first step")
    first_step: FirstStepKind | None = Field(
        None, description=f"how the evaluation at sigma_max is made (default {FIRST_STEP}): by the network, or by a "
        "Gaussian of the model (analytic: closed form; flowmap: its exact flow to the next sigma) with a gaussian")
    gaussian: str | None = Field(None, description="gaussian artifact id for an analytic first step (dode gaussian)")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="after")
    def _job(self) -> SampleRun:
        if self.lambdas is not None:
            if self.sigmas is not None or self.gaussian is not None:
                raise ValueError("lambdas fix the grid and carry their own first step; drop sigmas and gaussian "
                                 "when sampling with lambdas")
            return self
        if self.sigmas is not None and (self.nfe is not None or self.family is not None):
            raise ValueError("sigmas is the whole grid: drop nfe and family")
        if self.sigmas is None and self.nfe is None:
            raise ValueError("give nfe (network calls per sample) or sigmas (an explicit grid), or "
                             "lambdas=<lambdas artifact id>")
        check_first_step(self.first_step or FIRST_STEP, self.gaussian)
        _ = self.grid  # the solver makes exactly nfe calls on the grid
        return self

    @property
    def grid(self) -> GridSpec:
        """The base sampler's grid: the explicit ``sigmas``, or the one on which the solver makes ``nfe`` calls."""
        if self.sigmas is not None:
            return GridSpec.explicit(list(self.sigmas))
        return GridSpec.for_calls(self.family or FAMILY, self.solver or STUDENT_SOLVER, self.nfe,
                                  self.first_step or FIRST_STEP)

    def job(self, registry: Any) -> SamplingJob:
        """The sampling job: the base sampler's, or that of the lambdas (read from ``registry``), whose solver
        and grid it takes; a solver, nfe, family or first step given with them must be theirs."""
        seeds = self.sampling.model_dump(include={"n_samples", "first_seed", "batch_size"})
        if self.lambdas is None:
            return SamplingJob(model=self.model, solver=self.solver or STUDENT_SOLVER, grid=self.grid.to_dict(),
                               first_step=self.first_step or FIRST_STEP, gaussian_id=self.gaussian, **seeds)
        registry.check_readable()
        art = lambdas_artifact(registry, self.lambdas)
        lam = load_lambdas(registry, art)
        grid = GridSpec(**art.params["grid"]) if "grid" in art.params else GridSpec.explicit(lam.sigmas)
        calls = network_calls(lam.solver, len(lam.sigmas) - 1, lam.first)
        implied = {"solver": (self.solver, lam.solver), "nfe": (self.nfe, calls), "family": (self.family, grid.family),
                   "first_step": (self.first_step, lam.first.kind if lam.first else FIRST_STEP)}
        clash = [f"{name} {given} (they imply {theirs})" for name, (given, theirs) in implied.items()
                 if given is not None and given != theirs]
        if clash:
            raise ValueError(f"lambdas {art.short} were fitted for solver {lam.solver}, NFE {calls} on a "
                             f"{grid.family} grid; drop {', '.join(clash)}: the lambdas imply them")
        return SamplingJob(model=self.model, solver=lam.solver, grid=None, lambdas_id=art.id, **seeds)


class ScoreRun(Config):
    """The score stage: scores of given ``samples``, or a re-evaluation of registered ``lambdas`` (default:
    the newest of every key for the model) against the model as it is now."""

    model: ModelName = Field(DEFAULT_MODEL, description="model name (e.g. digits-ddpm), a diffusers folder or hub id")
    samples: tuple[str, ...] = Field((), description="samples artifact ids to score")
    lambdas: tuple[str, ...] = Field((), description="lambdas ids to re-evaluate (default: all of the model's)")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    @model_validator(mode="after")
    def _what(self) -> ScoreRun:
        if self.samples and self.lambdas:
            raise ValueError("give samples (to score them) or lambdas (to re-evaluate them), not both")
        if self.samples and "rmse" in self.scoring.metrics:
            raise ValueError("rmse pairs samples with the teacher's; re-evaluate lambdas (drop samples) for it")
        return self


class PipelineRun(Config):
    """The whole sweep: solvers x NFEs on a model, base vs D-ODE (and variants) vs teacher, scored."""

    model: ModelName = Field(DEFAULT_MODEL, description="model name (e.g. digits-ddpm), a diffusers folder or hub id")
    solvers: tuple[Solver, ...] = Field(("euler", "ipndm", "dpmpp_2m"), description="base solvers to sweep")
    nfes: tuple[Int, ...] = Field((3, 4, 5, 6), description="network calls per sample to sweep (a solver skips "
                                  "those it cannot make exactly)")
    nfes_by_solver: dict[Solver, list[Int]] = Field(default_factory=dict,
                                                    description="NFEs for one solver instead of nfes, e.g. heun=3,5,7")
    family: Family = Field(FAMILY, description=FAMILY_HELP)
    variants: dict[str, Variant] = Field(
        default_factory=dict, description="more fits to compare, by name: {objective, options, solvers, nfes, "
        "first_step}, e.g. {\"λ+timesteps\": {\"objective\": \"final\", \"nfes\": [4, 5]}}")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    fit: FitConfig = Field(default_factory=FitConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    @model_validator(mode="after")
    def _plan(self) -> PipelineRun:
        cells = self.cells
        check_alignment(self.teacher, [c["solver"] for c in cells], self.family)
        for v in self.planned_variants.values():
            self.teacher.check_first_step(v["first_step"])
        self.teacher.check_budget(max(c["grid"]["steps"] for c in cells))
        return self

    @property
    def cells(self) -> list[dict]:
        """The sweep's (solver, NFE, grid) cells (``dode.pipeline.sweep.plan_cells``)."""
        return plan_cells(list(self.solvers), list(self.nfes), self.nfes_by_solver or None, self.family)

    @property
    def planned_variants(self) -> dict[str, dict]:
        """The variants, checked and completed (``dode.pipeline.sweep.plan_variants``)."""
        return plan_variants(self.variants)

    @property
    def variant_fits(self) -> dict[str, FitConfig]:
        """Each variant's fit: the sweep's, with the variant's objective and options."""
        return {name: self.fit.model_copy(update={"objective": v.objective, "options": v.options})
                for name, v in self.variants.items()}


MAX_PROMPTS, MAX_PROMPT_CHARS = 1000, 2000  # far beyond a distillation set; protect against a wrong file or flag
MAX_PROMPT_SAMPLES = 100_000  # prompts x samples per prompt: the latents fitted on, all held at once
Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS)]


class PromptDistillRun(PipelineDistillConfig):
    """The distill-pipeline stage: lambdas for a diffusers text-to-image ``pipeline`` (Stable Diffusion 1.x/2.x,
    SDXL, SD3, FLUX) fitted over ``prompts`` on ``device``, as ``dode distill-pipeline`` fits them
    (``dode.integrations.diffusers.distill.PipelineDistillConfig``)."""

    pipeline: str = Field(min_length=1, max_length=4096, description="diffusers pipeline folder (save_pretrained) or "
                          "hub id")
    prompts: tuple[Prompt, ...] = Field(min_length=1, max_length=MAX_PROMPTS, json_schema_extra=WHOLE_ITEMS,
                                        description=f"prompts to fit on (1 to {MAX_PROMPTS}, each up to "
                                        f"{MAX_PROMPT_CHARS} characters)")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d{1,3})?|mps)$", description="cpu, cuda, cuda:N or mps")

    @model_validator(mode="after")
    def _latents(self) -> PromptDistillRun:
        if len(self.prompts) * self.samples_per_prompt > MAX_PROMPT_SAMPLES:
            raise ValueError(f"{len(self.prompts)} prompts x {self.samples_per_prompt} samples per prompt = "
                             f"{len(self.prompts) * self.samples_per_prompt} latents, above the bound of "
                             f"{MAX_PROMPT_SAMPLES:,}; fit on fewer prompts or samples per prompt")
        return self

    @property
    def distillation(self) -> PipelineDistillConfig:
        """The fit's own configuration: every field but the pipeline, its prompts and the device."""
        return PipelineDistillConfig.model_validate(self.model_dump(include=set(PipelineDistillConfig.model_fields)))


STAGES: dict[str, type[Config]] = {"pipeline": PipelineRun, "teacher": TeacherRun, "distill": DistillRun,
                                   "sample": SampleRun, "score": ScoreRun, "distill-pipeline": PromptDistillRun}


__all__ = ["STAGES", "DistillRun", "PipelineRun", "PromptDistillRun", "SampleRun", "ScoreRun", "ScoringConfig",
           "TeacherRun"]
