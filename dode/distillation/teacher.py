"""The teacher: where D-ODE's distillation targets come from (Kim et al., 2024, Sec. 4).

One owner for the concept: a frozen ``TeacherConfig`` (solver, factor, alignment, seeds), its ``TeacherPlan``
for a student grid (the teacher's sigmas, the states to keep, the target of each student evaluation), and
one runner, ``run_teacher``, that streams the kept states into a sink (a dict, or the Parquet writer of
``dode.store.trajectory``).

``exact`` alignment (the default): the teacher runs on the ``factor``-fold refinement of the student grid,
so student grid index i is teacher index i * factor and the target of student evaluation k is the teacher
state at ``out_index(k) * factor``. ``official`` reproduces the reference code's indexing (method.md Sec. 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from dode.common import progress
from dode.common.config import Count, Int
from dode.core.gaussian import NETWORK, FirstStep
from dode.core.rng import seeded_noise
from dode.core.sampling import prepare, sample
from dode.core.schedules import is_karras, karras_sigmas, refine, vp_sigmas
from dode.core.solvers import SOLVERS, get_solver
from dode.core.types import Denoiser, Evaluation, Tensor
from dode.distillation.config import Seed, SeededBatches, Solver

MAX_TEACHER_STEPS = 100_000  # teacher grid steps (student steps x factor): far beyond any fit here
MAX_HELD_STATES = 2_000_000  # teacher states a fit holds in memory (samples x student grid points)
StateSink = Callable[[int, Tensor, "Tensor | None"], None]  # (teacher grid index, state, raw D at that state)


def student_targets(solver: str, steps: int, first: FirstStep | None = None) -> tuple[int, ...]:
    """For each evaluation k of ``solver`` on a ``steps``-step grid, the student grid index of its target:
    the state its update produces, ``out_index(k)`` (under a ``flowmap`` first step the solver starts one
    grid point later, and so do its targets)."""
    solver_ = get_solver(solver)
    skip = int(first is not None and first.kind == "flowmap")
    return tuple(skip + solver_.out_index(k, steps - skip) for k in range(solver_.nfe(steps - skip)))


class TeacherConfig(SeededBatches):
    """How the distillation targets are made: the teacher ``solver`` on the ``factor``-fold refined student
    grid (``exact`` alignment) or the reference code's Euler teacher (``official``; its solver defaults to
    euler there and may be nothing else), run from ``n_samples`` seeded noises from ``first_seed`` on, in
    batches of ``batch_size``. One teacher serves every student of a grid, so its solver is fixed
    independently of the students: ``dpmpp_2m`` (2nd order, one evaluation per step) by default."""

    solver: Solver = Field("dpmpp_2m", description="teacher solver (official alignment: euler)")
    factor: Int = Field(10, ge=1, le=1000, description="teacher steps per student step")
    alignment: Literal["exact", "official"] = Field(
        "exact", description="teacher targets: exact (the refined student grid) or official (the reference code's)")
    n_samples: Count = Field(256, description="teacher/distillation samples")
    first_seed: Seed = Field(1_000_000, description="first seed of the distillation samples")
    batch_size: Count = Field(250, description="samples per teacher batch and stored chunk")

    @model_validator(mode="before")
    @classmethod
    def _official_solver(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("alignment") == "official" and "solver" not in data:
            return {**data, "solver": "euler"}
        return data

    @model_validator(mode="after")
    def _check(self) -> TeacherConfig:
        if self.alignment == "official" and self.solver != "euler":
            raise ValueError("official alignment uses the reference code's Euler teacher; drop the teacher solver")
        return self

    def check_budget(self, steps: int) -> None:
        """The teacher of a ``steps``-step student grid within the stated bounds: at most MAX_TEACHER_STEPS
        teacher steps (``steps`` x ``factor``) and MAX_HELD_STATES states held for the fit (``n_samples`` x
        (``steps`` + 1)); refused before any work otherwise."""
        if steps * self.factor > MAX_TEACHER_STEPS:
            raise ValueError(f"the teacher would run {steps} student steps x factor {self.factor} = "
                             f"{steps * self.factor} steps, above the bound of {MAX_TEACHER_STEPS:,}; lower the "
                             "steps (nfe) or the teacher factor")
        if self.n_samples * (steps + 1) > MAX_HELD_STATES:
            raise ValueError(f"the fit would hold {self.n_samples} teacher samples x {steps + 1} grid points = "
                             f"{self.n_samples * (steps + 1)} states in memory, above the bound of "
                             f"{MAX_HELD_STATES:,}; lower the teacher n_samples or the steps (nfe)")

    def check_first_step(self, first_step: str) -> None:
        """An analytic first step (not the network's) needs exact alignment: the reference code's indexing
        (``official``) has no first step to skip."""
        if first_step != NETWORK and self.alignment != "exact":
            raise ValueError("an analytic first step needs alignment=exact (the reference code's indexing has no "
                             "first step to skip)")

    @classmethod
    def own(cls, student: str, **fields: Any) -> TeacherConfig:
        """The paper's teacher for ``student``: its own solver (Kim et al., 2024, Sec. 4), except where its states
        on the refined grid would be lower-order stages (DPM-Solver-3 groups three steps: DPM-Solver++(3M)
        instead: its ``Solver.own_teacher``); ``fields`` as the constructor's."""
        return cls(solver=get_solver(student).own_teacher or student, **fields)

    def check_stored(self) -> None:
        """A teacher stored once per student grid (for every solver on it) uses exact alignment: the reference
        code's indexing (``official``) depends on the student, so an official fit runs its own teacher."""
        if self.alignment != "exact":
            raise ValueError("a stored teacher uses exact alignment (an official fit runs its own teacher)")

    @property
    def seeds(self) -> range:
        """The seeds of the distillation noise."""
        return range(self.first_seed, self.first_seed + self.n_samples)

    def noise(self, shape: Sequence[int]) -> Tensor:
        """The distillation noise: one seeded unit Gaussian per seed (``dode.core.rng.seeded_noise``)."""
        return seeded_noise(list(self.seeds), shape)

    def plan(self, sigmas: Tensor, solver: str, denoiser: Denoiser | None = None,
             first: FirstStep | None = None) -> TeacherPlan:
        """The teacher for ``solver`` on the student grid ``sigmas`` (``denoiser`` only for ``official``
        on a discrete model's DDIM grid, which needs its training schedule). The teacher always starts at
        sigmas[0] with the network; under a ``flowmap`` first step the student's evaluations start one grid
        point later, and so do their targets."""
        _, sigmas, _, _ = prepare(torch.zeros(1, 1), sigmas.detach().cpu(), solver, "data")
        steps = len(sigmas) - 1
        self.check_budget(steps)
        self.check_first_step(first.kind if first is not None else NETWORK)
        if self.alignment == "exact":
            targets = tuple(i * self.factor for i in student_targets(solver, steps, first))
            check_lands(self.solver, steps * self.factor, range(0, steps * self.factor + 1, self.factor))
            return TeacherPlan(self, refine(sigmas, self.factor), self.solver, targets)
        return self._official_plan(sigmas, solver, denoiser)

    def _official_plan(self, sigmas: Tensor, solver: str, denoiser: Denoiser | None) -> TeacherPlan:
        """The reference code's targets: an Euler teacher on a fresh grid of factor x NFE steps of the same
        family, target of evaluation k at teacher index (k + 1) x factor (method.md Sec. 3)."""
        steps, nfe, c = len(sigmas) - 1, get_solver(solver).nfe(len(sigmas) - 1), self.factor
        official = get_solver(solver).official
        if "karras" in official and is_karras(sigmas):
            fine = karras_sigmas(c * nfe, float(sigmas[-2]), float(sigmas[0]))
            return TeacherPlan(self, fine, "euler", tuple((k + 1) * c for k in range(nfe)))
        table = getattr(denoiser, "sigmas_train", None)
        if "ddim" in official and table is not None:
            abar = 1 / (1 + table.to(torch.float64) ** 2)
            if torch.allclose(sigmas, vp_sigmas(abar, steps, "ddim").to(sigmas), rtol=1e-9):
                fine_steps = min(len(table), c * steps)
                targets = tuple(min((k + 1) * c, fine_steps) for k in range(nfe - 1)) + (fine_steps,)
                return TeacherPlan(self, vp_sigmas(abar, fine_steps, "ddim"), "euler", targets)
        raise ValueError(f"official alignment is defined for {official_cases()} (a ddim grid of a discrete model's "
                         "training schedule, dode.vp_sigmas(..., 'ddim')); use alignment='exact' for anything else")


def official_solvers() -> dict[str, list[str]]:
    """The reference code's cases: grid family -> the solvers official alignment is defined for there
    (``Solver.official``)."""
    out: dict[str, list[str]] = {}
    for name, solver in SOLVERS.items():
        for family in solver.official:
            out.setdefault(family, []).append(name)
    return out


def official_cases() -> str:
    return "; ".join(f"{' and '.join(solvers)} on {family} grids" for family, solvers in official_solvers().items())


def check_official(solvers: Iterable[str], family: str) -> None:
    """One ValueError unless official alignment is defined for every solver on a ``family`` grid (``Solver.official``)."""
    outside = sorted(set(solvers) - set(official_solvers().get(family, ())))
    if outside:
        raise ValueError(f"official alignment (the reference code's Euler teacher) is defined for {official_cases()}; "
                         f"use alignment=exact for {outside} on {family} grids")


def check_lands(solver: str, steps: int, indices: Iterable[int]) -> None:
    """One ValueError unless ``solver`` on a ``steps``-step grid ends a solver step at each of ``indices``
    (``Solver.full_state``): a singlestep solver groups grid steps, and the states inside a group are its
    lower-order stages."""
    solver_ = get_solver(solver)
    missed = [i for i in indices if 0 < i < steps and not solver_.full_state(i, steps)]
    if missed:
        raise ValueError(f"teacher solver {solver!r} makes no full state at teacher grid indices {missed[:4]} (it "
                         "groups grid steps); choose a teacher solver with one step per grid step, e.g. dpmpp_2m")


@dataclass(frozen=True)
class TeacherPlan:
    """A teacher for one student grid: its ``sigmas`` and resolved ``solver``, and for each student
    evaluation k the teacher grid index of its target (``targets``)."""

    spec: TeacherConfig
    sigmas: Tensor
    solver: str
    targets: tuple[int, ...]
    extra_keep: frozenset[int] = field(default_factory=frozenset)

    @property
    def keep(self) -> frozenset[int]:
        """The teacher grid indices whose states are needed: the targets and the start."""
        return frozenset(self.targets) | {0} | self.extra_keep

    def on_student_grid(self) -> TeacherPlan:
        """This plan keeping the teacher's state at every student grid point (exact alignment only), so that
        one stored teacher serves every solver on the grid (``distill_from_states``)."""
        self.spec.check_stored()
        c = self.spec.factor
        return TeacherPlan(self.spec, self.sigmas, self.solver, self.targets, frozenset(range(0, len(self.sigmas), c)))

    def student_index(self, teacher_index: int) -> int:
        """The student grid index of a kept teacher index (exact alignment)."""
        return teacher_index // self.spec.factor

    def record(self) -> dict[str, Any]:
        """What is recorded with fitted lambdas."""
        return {"solver": self.solver, "factor": self.spec.factor, "alignment": self.spec.alignment,
                "steps": len(self.sigmas) - 1}


def run_teacher(
    denoiser: Denoiser, noise: Tensor, sigmas: Tensor, solver: str, keep: Iterable[int], sink: StateSink
) -> None:
    """Run a teacher from unit ``noise`` on ``sigmas`` and pass the state at every grid index in ``keep`` to
    ``sink(index, x, denoised)``, in order, holding only the current state. ``denoised`` is the raw denoiser
    output made at exactly that state (None where none was made: the final state)."""
    keep = set(keep)
    held: dict[str, Any] = {"index": 0, "x": noise.to(torch.float64) * sigmas[0].to(noise.device), "d": None}

    def flush() -> None:
        if held["index"] in keep and held["x"] is not None:
            sink(held["index"], held["x"], held["d"])

    def on_state(index: int, x: Tensor, ev: Evaluation) -> None:
        # A multi-evaluation step (Heun) reports an index twice; the latest state is held until it changes.
        if held["x"] is not None and (ev.x is held["x"] or torch.equal(ev.x, held["x"])):
            held["d"] = ev.denoised
        if index != held["index"]:
            flush()
            bar.update(index - held["index"])
        held.update(index=index, x=x, d=None)

    with progress.bar(len(sigmas) - 1, f"teacher {solver} ({len(noise)} samples)", "step") as bar:
        sample(denoiser, noise, sigmas, solver, on_state=on_state)
    flush()


def teacher_states(
    denoiser: Denoiser, noise: Tensor, plan: TeacherPlan, keep: Iterable[int] | None = None
) -> dict[int, Tensor]:
    """The teacher's states in memory, by teacher grid index: the plan's ``keep`` unless given."""
    states: dict[int, Tensor] = {}
    keep = plan.keep if keep is None else keep
    run_teacher(denoiser, noise, plan.sigmas, plan.solver, keep, lambda i, x, d: states.__setitem__(i, x))
    return states
