"""The objective ``final``: all lambda_k -- and the interior timesteps -- fitted jointly on the final sample.

Minimises L(lambda, sigma) = E ||x_0(lambda, sigma; n) - x_0^teacher(n)||^2, the mean squared error of the
final sample to the teacher's from the same noise, by backpropagation through the unrolled sampler
(``dode.core.sampling.integrate(grad=True)``); the network is differentiated with respect to its inputs only.
Greedy D-ODE (Kim et al., 2024) fits each lambda_k to the next state; fitting the final sample instead, and
moving the timesteps as LD3 does (Tong et al., 2025), removes the myopia. The timesteps are learned as their
own log sigmas, u_j = log sigma_j for the interior sigma_1..sigma_{N-1} (sigma_0 = sigma_max and the final 0
stay fixed), projected after every step onto a strictly decreasing grid inside [sigma_lo, sigma_max)
(``LogSigmaGrid``). Unlike LD3's softmax-cumsum of gap shares, whose gradient with respect to a gap scales
with that gap's share, every sigma moves at the optimiser's pace wherever it starts -- including at the floor
sigma_lo, where a Karras grid ending at the model's sigma_min puts the last one (issue 26: a gap share
clamped to 1e-4 pinned it there).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator
from torch.utils.checkpoint import checkpoint

from dode.common import progress
from dode.common.config import Flag, Int, Number
from dode.core.sampling import integrate
from dode.core.schedules import karras_sigmas
from dode.core.types import Denoiser, Tensor
from dode.distillation.objectives.problem import FitProblem, FitResult, Options
from dode.distillation.objectives.step import greedy_lambdas

INITS = ("timesteps", "zero", "greedy")  # where lambda starts: after a timesteps-only fit, at 0, or at greedy D-ODE
OPTIMIZERS = ("adam", "lbfgs")
DTYPES = {"float64": torch.float64, "float32": torch.float32}  # the fit's sampler state
SELECTION_TOL = 0.01  # relative: a later iterate is selected when its selection error is lower by more than this
MIN_LOG_GAP = 1e-3  # smallest distance of neighbouring learned log sigmas (the grid stays strictly decreasing)
Rate = Annotated[Number, Field(gt=0)]


class FinalOptions(Options):
    """The options of the objective ``final`` (``fit_final``)."""

    learn_lambdas: Flag = Field(True, description="fit lambda")
    learn_sigmas: Flag = Field(True, description="fit the interior timesteps")
    iterations: Int = Field(100, ge=0, description="optimiser steps (with init=timesteps: half timesteps-only)")
    lr_lambdas: Rate = Field(0.05, description="Adam learning rate of lambda")
    lr_sigmas: Rate = Field(0.1, description="Adam learning rate of the timestep logits")
    micro_batch: Int = Field(32, ge=1, description="samples per backward pass (bounds memory)")
    eval_every: Int = Field(10, ge=1, description="iterations between selection measurements")
    patience: Int = Field(5, ge=0, description="measurements without improvement before stopping")
    activation_checkpointing: Flag = Field(False, description="recompute network calls in the backward pass")
    optimizer: Literal[OPTIMIZERS] = Field("adam", description="adam, or lbfgs for small problems")
    init: Literal[INITS] = Field("timesteps", description="where lambda starts: after a timesteps-only fit, at 0, "
                                 "or at greedy D-ODE")
    max_fit: Int | None = Field(None, ge=1, description="fit on the first max_fit fit samples (default: all)")
    dtype: Literal[tuple(DTYPES)] = Field("float64", description="the fit's sampler dtype")
    start_sigma_min: Rate | None = Field(None, description="start the fit from the Karras grid of the caller's "
                                         "steps down to this sigma (default: from the caller's grid)")

    @model_validator(mode="after")
    def _learns(self) -> FinalOptions:
        if not (self.learn_lambdas or self.learn_sigmas):
            raise ValueError("needs learn_lambdas=true and/or learn_sigmas=true; for neither, "
                             "sample with the base solver")
        if self.start_sigma_min is not None and not self.learn_sigmas:
            raise ValueError("start_sigma_min moves the grid the fit starts from: it needs learn_sigmas=true")
        return self


def sigma_floor(denoiser: Denoiser, sigmas: Tensor) -> float:
    """sigma_lo: the model's smallest noise level, or a tenth of the grid's where the model states none (or 0,
    as flow-matching models, trained down to t = 0, do)."""
    smallest = float(sigmas[-2])
    model_min = float(getattr(denoiser, "sigma_min", None) or 0.0)
    return min(model_min, smallest) if model_min > 0 else smallest / 10


class LogSigmaGrid:
    """The learned grid's parameters ``u`` (a leaf tensor): u_j = log sigma_j for sigma_1..sigma_{N-1}. The grid
    is (sigma_max, exp(u), 0); ``project`` puts u back onto [log sigma_lo, log sigma_max) in strictly decreasing
    order, MIN_LOG_GAP apart, after each optimiser step. d log sigma_j / d u_j = 1: no sigma's pace depends on
    where it sits."""

    def __init__(self, start: Tensor, sigma_lo: float) -> None:
        if len(start) < 3:
            raise ValueError("a learned grid needs at least 2 steps (one interior sigma); pass a longer grid")
        self.sigma_max, self.sigma_lo = start[0].detach(), sigma_lo
        self.u = start[1:-1].detach().clamp(min=sigma_lo).log().clone()
        self.project()

    def __call__(self) -> Tensor:
        return torch.cat([self.sigma_max.reshape(1), self.u.exp(), torch.zeros_like(self.sigma_max).reshape(1)])

    @torch.no_grad()
    def project(self) -> None:
        """Sort descending, then push each u_j below its upper neighbour and above its lower one (the floor
        for the last) by MIN_LOG_GAP: the nearest strictly decreasing grid in the bounds, to within the gap."""
        v = self.u.sort(descending=True).values.tolist()
        upper, lower = float(self.sigma_max.log()), math.log(self.sigma_lo)
        for j in range(len(v)):
            v[j] = min(v[j], (v[j - 1] if j else upper) - MIN_LOG_GAP)
        for j in reversed(range(len(v))):
            v[j] = max(v[j], v[j + 1] + MIN_LOG_GAP if j + 1 < len(v) else lower)
        self.u.copy_(torch.tensor(v, dtype=self.u.dtype))


def final_sample(problem: FitProblem, denoiser: Denoiser, lam: Tensor, sigmas: Tensor, rows: slice, grad: bool) -> Tensor:
    """The student's final sample for the fit noise ``rows`` with lambdas ``lam`` on grid ``sigmas``, in the
    fit's dtype (the fit noise's)."""
    noise = problem.noise[rows]
    return integrate(denoiser, noise, sigmas, problem.solver, lambda k, update: lam[k],
                     correction=problem.correction, grad=grad, first=problem.first, dtype=noise.dtype)


def accumulate(problem: FitProblem, denoiser: Denoiser, lam: Tensor, grid: Any, micro_batch: int, leaves: list) -> float:
    """The full-batch loss and its gradient in the leaves' .grad, one micro-batch at a time (bounded memory):
    L = sum over micro-batches of ||x - x_teacher||^2 / (n d), each backpropagated on its own."""
    n = len(problem.noise)
    scale = 1.0 / problem.final.numel()
    total = 0.0
    for start in range(0, n, micro_batch):
        rows = slice(start, start + micro_batch)
        x = final_sample(problem, denoiser, lam, grid(), rows, grad=True)
        loss = (x - problem.final[rows]).square().sum() * scale
        loss.backward(inputs=leaves)
        total += float(loss.detach())
    return total


def final_error(problem: FitProblem, lam: Tensor, sigmas: Tensor, noise: Tensor, target: Tensor) -> float:
    """Mean squared final error to the teacher's ``target`` from ``noise`` (no gradient)."""
    values = lam.detach()
    x = integrate(problem.denoiser, noise, sigmas.detach(), problem.solver, lambda k, update: values[k],
                  correction=problem.correction, first=problem.first)
    return float((x - target).square().mean())


def clearly_lower(score: float, best: float) -> bool:
    """Whether a selection error is lower than the best so far by more than SELECTION_TOL of it: iterates
    closer than that are a near-tie, and the earlier one stays selected, so rounding differences between
    machines, thread counts and micro-batch sizes cannot flip the selection."""
    return score < best * (1 - SELECTION_TOL)


DEFAULTS = FinalOptions()


def fit_final(problem: FitProblem, options: FinalOptions = DEFAULTS) -> FitResult:
    """Adam (or L-BFGS, for small problems solved to high precision) on lambda and the grid logits through the
    unrolled sampler, on the first ``max_fit`` fit samples (all by default). Every ``eval_every`` iterations the
    held-out final error is measured; the best iterate is kept and fitting stops after ``patience``
    measurements without improvement (without a held-out split: the fit error).

    ``init`` says where lambda starts: ``timesteps`` (the default when both are learned) first fits the
    timesteps alone from lambda = 0 for half the iterations, then both from there, so the joint result is
    selected against its own timesteps-only start and both are candidates; ``zero`` starts the joint fit at
    the base solver; ``greedy`` at greedy D-ODE's lambdas (which hurt multistep solvers). The guard ranks the
    result, the timesteps-only sub-fit, greedy D-ODE and the base solver by distribution. ``micro_batch``
    bounds memory (gradients are accumulated); ``activation_checkpointing`` recomputes each network call in
    the backward pass instead of storing its activations. ``dtype`` float32 runs the fit's sampler in float32
    (selection and the guard stay float64; bench/fit_cost.py measures what each costs). ``start_sigma_min``:
    the fit starts from the Karras grid (rho 7) of the caller's steps from the caller's sigma_max down to this
    sigma (None: from the caller's grid); the caller's grid stays the guard's base."""
    o = options
    learn_lambdas, learn_sigmas, iterations, max_fit = o.learn_lambdas, o.learn_sigmas, o.iterations, o.max_fit
    start_time = time.perf_counter()
    sigmas = start_grid(problem.sigmas, o.start_sigma_min)
    greedy = tuple(greedy_lambdas(problem))
    zeros = (0.0,) * len(greedy)
    if max_fit is not None:  # fit on the first max_fit samples of the fit split (cost is linear in them)
        problem = replace(problem, noise=problem.noise[:max_fit], targets=tuple(t[:max_fit] for t in problem.targets))
    problem = replace(problem, noise=problem.noise.to(DTYPES[o.dtype]),
                      targets=tuple(t.to(DTYPES[o.dtype]) for t in problem.targets))
    sigma_lo = min(sigma_floor(problem.denoiser, problem.sigmas), sigma_floor(problem.denoiser, sigmas))
    settings = {"micro_batch": o.micro_batch, "eval_every": o.eval_every, "patience": o.patience,
                "optimizer": o.optimizer, "lr_lambdas": o.lr_lambdas, "lr_sigmas": o.lr_sigmas, "sigma_lo": sigma_lo,
                "activation_checkpointing": o.activation_checkpointing}
    alternatives: list[tuple[str, tuple[float, ...], Tensor]] = [("greedy", greedy, problem.sigmas)]
    info: dict[str, Any] = {}
    grid, remaining = sigmas, iterations
    if learn_lambdas and learn_sigmas and o.init == "timesteps":
        # Stage 1: the timesteps alone from lambda = 0; the joint fit starts from (and is selected against) it.
        remaining = iterations - iterations // 2
        stage, info["timesteps"] = run_fit(problem, zeros, sigmas, False, True, iterations // 2, **settings)
        grid = stage["grid"]
        alternatives.insert(0, ("timesteps", zeros, grid))
    # The fit itself (stage 2 after timesteps-only).
    start = greedy if learn_lambdas and o.init == "greedy" else zeros
    best, fitted = run_fit(problem, start, grid, learn_lambdas, learn_sigmas, remaining, **settings)
    info.update(fitted, seconds=round(time.perf_counter() - start_time, 3), sigma_lo=sigma_lo,
                start_sigmas=problem.sigmas.tolist())
    return FitResult(tuple(best["lam"].tolist()), best["grid"], "final", info, tuple(alternatives), "fd")


def run_fit(problem: FitProblem, start: tuple[float, ...], start_grid: Tensor, learn_lambdas: bool, learn_sigmas: bool,
            iterations: int, *, micro_batch: int, eval_every: int, patience: int, optimizer: str, lr_lambdas: float,
            lr_sigmas: float, sigma_lo: float, activation_checkpointing: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """One optimisation from lambda = ``start`` on ``start_grid`` (sigma_0 fixed): the best iterate and its report."""
    lam = torch.tensor(start, dtype=problem.noise.dtype, device=start_grid.device)
    timesteps = LogSigmaGrid(start_grid, sigma_lo) if learn_sigmas else None
    theta = timesteps.u if timesteps is not None else None
    leaves = [t.requires_grad_() for t, on in ((lam, learn_lambdas), (theta, learn_sigmas)) if on]

    def grid() -> Tensor:
        return timesteps() if timesteps is not None else start_grid

    denoiser = problem.denoiser
    if activation_checkpointing:
        def denoiser(x: Tensor, sigma: Tensor, den: Denoiser = problem.denoiser) -> Tensor:
            return checkpoint(den, x, sigma, use_reentrant=False)

    def step(optimiser: torch.optim.Optimizer, losses: list[float]) -> None:
        # One optimiser step on the full-batch final-sample loss, accumulated over micro-batches.
        def closure() -> Tensor:
            optimiser.zero_grad(set_to_none=True)
            losses.append(accumulate(problem, denoiser, lam, grid, micro_batch, leaves))
            return torch.tensor(losses[-1], dtype=torch.float64)

        optimiser.step(closure)
        if timesteps is not None:
            timesteps.project()

    optimiser = make_optimiser(optimizer, lam if learn_lambdas else None, theta if learn_sigmas else None,
                               lr_lambdas, lr_sigmas)
    return optimise(problem, lam, grid, lambda losses: step(optimiser, losses), iterations, eval_every, patience)


def optimise(problem: FitProblem, lam: Tensor, grid: Any, step: Any, iterations: int, eval_every: int,
             patience: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``step(losses)`` up to ``iterations`` times; every ``eval_every`` iterations measure the final error
    on the selection split (else the fit split), keep the best iterate -- a later one only when it is clearly
    lower (``clearly_lower``) -- and stop after ``patience`` measurements without a clear improvement. Returns
    the best iterate and what the fit reports."""
    selecting = len(problem.selection_noise) > 0
    split = (problem.selection_noise, problem.selection_final) if selecting else (problem.noise, problem.final)
    best: dict[str, Any] = {"score": math.inf, "iteration": 0, "lam": lam.detach().clone(), "grid": grid().detach()}
    curve: list[list[float]] = []
    losses: list[float] = []
    stale = 0
    bar = progress.bar(iterations, "distill (final sample)", "iteration")
    for it in range(iterations + 1):
        # Selection: measure, keep the best iterate, stop when it has not improved for a while.
        if it % eval_every == 0 or it == iterations:
            with torch.no_grad():
                current = grid().detach()
            score = final_error(problem, lam, current, *split)
            curve.append([it, score])
            bar.set_postfix(selection_mse=f"{score:.3g}", refresh=False)
            if clearly_lower(score, best["score"]):
                best, stale = {"score": score, "iteration": it, "lam": lam.detach().clone(), "grid": current}, 0
            else:
                stale += 1
            if it == iterations or stale > patience:
                break
        step(losses)
        bar.update(1)
    bar.close()
    return best, {"iterations": len(losses), "best_iteration": best["iteration"],
                  "selected_on": "selection" if selecting else "fit", "selection_mse": curve,
                  "fit_loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None}}


def make_optimiser(name: str, lam: Tensor | None, theta: Tensor | None, lr_lambdas: float, lr_sigmas: float):
    """Adam with one learning rate per parameter group, or L-BFGS with a strong-Wolfe line search."""
    leaves = [t for t in (lam, theta) if t is not None]
    if name == "lbfgs":
        return torch.optim.LBFGS(leaves, lr=1.0, max_iter=1, max_eval=25, line_search_fn="strong_wolfe", tolerance_grad=0.0,
                                 tolerance_change=0.0)
    groups = [{"params": [t], "lr": lr} for t, lr in ((lam, lr_lambdas), (theta, lr_sigmas)) if t is not None]
    return torch.optim.Adam(groups)


def start_grid(sigmas: Tensor, start_sigma_min: float | None) -> Tensor:
    """The grid the fit starts from: ``sigmas``, or the Karras grid of as many steps from sigmas[0] down to
    ``start_sigma_min`` (below sigmas[0])."""
    if start_sigma_min is None:
        return sigmas
    if start_sigma_min >= float(sigmas[0]):
        raise ValueError(f"objective 'final': start_sigma_min must lie below the grid's sigma_max "
                         f"{float(sigmas[0]):.4g}, got {start_sigma_min!r}")
    return karras_sigmas(len(sigmas) - 1, float(start_sigma_min), float(sigmas[0])).to(sigmas.device)
