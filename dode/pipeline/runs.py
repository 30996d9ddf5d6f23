"""The stage configurations: what each orchestrated stage runs, one frozen, validated object per stage.

``TeacherRun``, ``DistillRun``, ``SampleRun``, ``ScoreRun`` and ``PipelineRun`` hold the model, the cells
and the parts the library takes (``dode.distillation.config``: ``TeacherConfig``, ``FitConfig``, ``SamplingConfig``;
``ScoringConfig`` here). Each Prefect flow takes its stage's as its one typed parameter (the UI renders it
as a form), ``dode run STAGE`` derives its options from it (``flows.cli``), and a deployment's parameters
build it the same way: a rule that spans fields lives in the validator of the configuration that holds
them all, so bad input is refused before any work, with one message.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from dode.common.config import Config, build, checked
from dode.core.gaussian import FIRST_STEPS
from dode.core.grids import FAMILIES, GridSpec
from dode.core.solvers import SOLVERS
from dode.distillation.config import FitConfig
from dode.distillation.teacher import TeacherConfig, check_official
from dode.metrics.scores import check_metrics
from dode.models import check_model_name
from dode.pipeline.generate import SamplingConfig
from dode.pipeline.sweep import check_choice, plan_cells, plan_variants

DEFAULT_MODEL = "mixture-smooth"
ModelName = Annotated[str, checked(check_model_name)]
Family = Annotated[str, checked(lambda f: check_choice("grid family", f, FAMILIES))]
FirstStepKind = Annotated[str, checked(lambda f: check_choice("first step", f, FIRST_STEPS))]


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
    steps: int = Field(5, ge=1, le=100_000, description="student grid steps the teacher serves")
    family: Family = Field("karras", description=f"grid family: {', '.join(FAMILIES[:-1])}")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)

    @model_validator(mode="after")
    def _exact(self) -> TeacherRun:
        self.teacher.check_stored()
        return self

    @property
    def grid(self) -> GridSpec:
        return GridSpec(self.family, self.steps)


class DistillRun(Config):
    """The distill stage: lambdas for ``solver`` at ``nfe`` network calls on a ``family`` grid, with the
    network's or an analytic first evaluation (``first_step``)."""

    model: ModelName = Field(DEFAULT_MODEL, description="model name (e.g. digits-ddpm), a diffusers folder or hub id")
    solver: str = Field("euler", description="base solver")
    nfe: int = Field(5, ge=1, le=100_000, description="network calls per sample")
    family: Family = Field("karras", description=f"grid family: {', '.join(FAMILIES[:-1])}")
    first_step: FirstStepKind = Field(
        "network", description="network, or analytic / flowmap: the first evaluation by a Gaussian of the model's "
        "own samples (nfe stays the network calls)")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    fit: FitConfig = Field(default_factory=FitConfig)

    @model_validator(mode="after")
    def _cell(self) -> DistillRun:
        check_calls(self.solver, self.nfe, self.family, self.first_step)
        check_alignment(self.teacher, [self.solver], self.family)
        if self.first_step != "network" and self.teacher.alignment != "exact":
            raise ValueError("an analytic first step needs alignment=exact")
        return self

    @property
    def grid(self) -> GridSpec:
        """The student grid on which the solver makes ``nfe`` network calls."""
        return GridSpec.for_calls(self.family, self.solver, self.nfe, self.first_step)


def check_calls(solver: str, nfe: int, family: str, first_step: str) -> None:
    """One solver at ``nfe`` network calls with ``first_step`` on a ``family`` grid."""
    if first_step == "network":
        plan_cells([solver], [], {solver: [nfe]}, family)  # solver, family, at least 2 calls, an exact grid
        return
    check_choice("solver", solver, SOLVERS)
    GridSpec.for_calls(family, solver, nfe, first_step)


class SampleRun(Config):
    """The sample stage: a sampling job, base (``solver`` at ``nfe`` calls on a ``family`` grid, with a
    ``first_step`` and its ``gaussian``) or with D-ODE ``lambdas`` (their solver, grid and first step)."""

    model: ModelName = Field(DEFAULT_MODEL, description="model name (e.g. digits-ddpm), a diffusers folder or hub id")
    solver: str | None = Field(None, description="base solver (not with lambdas)")
    nfe: int | None = Field(None, ge=1, le=100_000, description="network calls per sample (not with lambdas)")
    family: Family = Field("karras", description=f"grid family: {', '.join(FAMILIES[:-1])}")
    lambdas: str | None = Field(None, description="lambdas artifact id: sample its solver, grid and first step")
    first_step: FirstStepKind = Field("network", description="network, or analytic / flowmap with a gaussian")
    gaussian: str | None = Field(None, description="gaussian artifact id for an analytic first step")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="after")
    def _job(self) -> SampleRun:
        if self.lambdas is None:
            if self.solver is None or self.nfe is None:
                raise ValueError("give solver and nfe (base sampling), or lambdas=<lambdas artifact id>")
            check_calls(self.solver, self.nfe, self.family, self.first_step)
            if self.first_step != "network" and not self.gaussian:
                raise ValueError("an analytic first step needs gaussian=<gaussian artifact id> (dode gaussian)")
        elif self.solver is not None or self.nfe is not None or self.gaussian or self.first_step != "network":
            raise ValueError("lambdas fix the solver, grid and first step; drop solver/nfe/first_step/gaussian when "
                             "sampling with lambdas")
        return self


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
    solvers: tuple[str, ...] = Field(("euler", "ipndm", "dpmpp_2m"), description="base solvers to sweep")
    nfes: tuple[int, ...] = Field((3, 4, 5, 6), description="network calls per sample to sweep (a solver skips "
                                  "those it cannot make exactly)")
    nfes_by_solver: dict[str, list[int]] = Field(default_factory=dict,
                                                 description="NFEs for one solver instead of nfes, e.g. heun=3,5,7")
    family: Family = Field("karras", description=f"grid family: {', '.join(FAMILIES[:-1])}")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="more fits to compare, by name: {objective, options, solvers, nfes, "
        "first_step}, e.g. {\"λ+timesteps\": {\"objective\": \"final\", \"nfes\": [4, 5]}}")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    fit: FitConfig = Field(default_factory=FitConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    @model_validator(mode="after")
    def _plan(self) -> PipelineRun:
        check_alignment(self.teacher, [c["solver"] for c in self.cells], self.family)
        variants = self.planned_variants
        if self.teacher.alignment != "exact" and any(v["first_step"] != "network" for v in variants.values()):
            raise ValueError("an analytic first step needs alignment=exact")
        _ = self.variant_fits  # each variant's fit builds (its objective's option values checked)
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
        """Each variant's fit: the sweep's, with the variant's objective and options (validated)."""
        return {name: build(FitConfig, {**self.fit.model_dump(), "objective": v["objective"], "options": v["options"]})
                for name, v in self.planned_variants.items()}


STAGES: dict[str, type[Config]] = {"pipeline": PipelineRun, "teacher": TeacherRun, "distill": DistillRun,
                                   "sample": SampleRun, "score": ScoreRun}


__all__ = ["STAGES", "DistillRun", "PipelineRun", "SampleRun", "ScoreRun", "ScoringConfig", "TeacherRun"]
