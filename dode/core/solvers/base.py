"""The solver protocol: a solver is a pure map from (grid, state, evaluation) to the next state.

Evaluation k is made at ``state.x`` and noise level ``sigmas[eval_index(k)]``; the update that follows
it produces the state at ``sigmas[out_index(k)]``. The update must be affine in ``denoised`` (the
D-ODE-corrected output of evaluation k); earlier evaluations enter through ``state.history`` raw.

Everything the rest of dode asks of a solver by its name is an attribute here, with its default: whether it
may start at sigma = inf, its stock diffusers equivalents, its own teacher and the reference code's cases; a
solver subclasses ``Solver`` (or ``OneEvalPerStep``) and sets its own, so a new solver is its module and one
entry in ``SOLVERS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from dode.core.types import Evaluation, SolverState, Tensor

MAX_HISTORY = 4


@dataclass(frozen=True)
class Stock:
    """A stock diffusers scheduler that is a solver at lambda = 0 (``dode.integrations.diffusers.stock``): its class
    name, the settings that make it this solver (e.g. ``{"solver_order": 2}``), and how its ``set_timesteps`` takes
    a custom grid (``dode.integrations.diffusers.export``): as ``sigmas``, as integer ``timesteps``, or not at all
    (None); ``flow`` for a scheduler of flow-matching models (its ``sigmas`` are the times t = sigma / (1 + sigma))."""

    scheduler: str
    config: Mapping[str, Any] = field(default_factory=dict)
    takes: Literal["sigmas", "timesteps"] | None = None
    flow: bool = False


class Solver(Protocol):
    name: str
    order: int  # the method's order (its highest; warm starts and final steps use lower ones)
    evals_per_step: int  # network evaluations per grid step, diffusers' scheduler ``order`` (Heun: 2)
    # Whether its first update stays bounded from sigma = inf (a flow-matching grid's t = 1,
    # ``dode.models.flow.check_flow_start``): Euler's x' = D + (sigma'/sigma)(x - D) does; a step across
    # [sigma', sigma] with a later evaluation (x + (sigma' - sigma) d) does not.
    infinite_start: bool = False
    stock: tuple[Stock, ...] = ()  # the stock diffusers schedulers it reproduces at lambda = 0, preferred first
    own_teacher: str | None = None  # the paper's teacher for it (``TeacherConfig.own``) when not itself
    official: tuple[str, ...] = ()  # grid families where the reference code's alignment is defined for it

    def full_state(self, index: int, steps: int) -> bool:
        """Whether its state at grid index ``index`` ends a solver step (a teacher's states must): not where it
        groups grid steps into the stages of one step."""
        return True

    def nfe(self, steps: int) -> int:
        """Network evaluations for a grid of ``steps`` steps (len(sigmas) - 1)."""

    def eval_index(self, k: int, steps: int) -> int:
        """Index into sigmas of the noise level at which evaluation k is made."""

    def out_index(self, k: int, steps: int) -> int:
        """Index into sigmas of the state produced by the update after evaluation k."""

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        """The update after evaluation ``ev`` (raw), using ``denoised`` (corrected) in its place."""


class OneEvalPerStep(Solver):
    """Base of solvers that evaluate once per grid step: evaluation k at sigma_k, result at sigma_{k+1}."""

    evals_per_step = 1

    def nfe(self, steps: int) -> int:
        return steps

    def eval_index(self, k: int, steps: int) -> int:
        return k

    def out_index(self, k: int, steps: int) -> int:
        return k + 1


def push(state: SolverState, ev: Evaluation, x: Tensor, carry: tuple[Tensor, ...] = ()) -> SolverState:
    """The next state: new x, one more evaluation done, the raw evaluation appended to the history."""
    return replace(state, x=x, k=state.k + 1, history=(*state.history, ev)[-MAX_HISTORY:], carry=carry)
