"""The objective ``step``: D-ODE's greedy closed-form fit, one evaluation at a time (Kim et al., 2024, Sec. 4)."""

from __future__ import annotations

from dode.core.correction import fit_lambda
from dode.core.sampling import Update, integrate
from dode.distillation.objectives.problem import FitProblem, FitResult, Options

SHRINK = 0.5  # the guard's intermediate candidate: the fitted lambdas halved


class StepOptions(Options):
    """The greedy fit takes no options."""


NONE = StepOptions()


def greedy_lambdas(problem: FitProblem) -> list[float]:
    """lambda_k = <d, r> / <d, d> pooled over the batch, for k = 0, 1, ... in sampling order.

    The next state is affine in lambda_k (every solver update is affine in the corrected output), so
    d = x(lambda=1) - x(lambda=0) and r = target_k - x(lambda=0) come from one network evaluation; the fitted
    lambda_k is applied before evaluation k + 1 is made.
    """
    values: list[float] = []

    def greedy(k: int, update: Update) -> float:
        x_plain = update(0.0).x
        lam = fit_lambda(update(1.0).x - x_plain, problem.targets[k] - x_plain)
        values.append(lam)
        return lam

    integrate(problem.denoiser, problem.noise, problem.sigmas, problem.solver, greedy, correction=problem.correction,
              first=problem.first)
    return values


def fit_step(problem: FitProblem, options: StepOptions = NONE) -> FitResult:
    """Greedy per-evaluation least squares to the teacher's states on the given grid; the guard may keep
    the lambdas, halve them or drop them, by their final error to the teacher on held-out noise."""
    values = tuple(greedy_lambdas(problem))
    halved = tuple(SHRINK * v for v in values)
    return FitResult(values, problem.sigmas, "fitted", {}, (("halved", halved, problem.sigmas),), "mse")
