"""The sampling loop: evaluate -> D-ODE correction -> solver update, once per network evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dode.core.correction import CORRECTIONS, Lambdas, corrected_denoised, correction_basis
from dode.core.fitted import check_sampler, fitted_grid, implied_first, implied_grid
from dode.core.gaussian import FirstStep
from dode.core.schedules import check_sigmas
from dode.core.solvers import DEFAULT_SOLVER, Solver, get_solver
from dode.core.types import Denoiser, Evaluation, SolverState, Tensor

Update = Callable[[float], SolverState]  # the solver update after evaluation k, as a function of lambda_k
LambdaRule = Callable[[int, Update], float]  # picks lambda_k; sees the update so the distiller can probe it
StateHook = Callable[[int, Tensor, Evaluation], None]  # (sigma index, state, raw evaluation) after each update


def solver_steps(sigmas: Tensor, first: FirstStep | None) -> int:
    """The grid steps the solver takes: all of them, or all but the first under a ``flowmap`` first step."""
    return len(sigmas) - 1 - (first is not None and first.kind == "flowmap")


def network_calls(solver: str, steps: int, first: FirstStep | None = None) -> int:
    """Network calls per sample for ``solver`` on a grid of ``steps`` steps: its evaluations, less the
    first one where a Gaussian answers it (``analytic``) or carries the state past it (``flowmap``)."""
    solver_ = get_solver(solver)
    if first is None:
        return solver_.nfe(steps)
    return solver_.nfe(steps) - 1 if first.kind == "analytic" else solver_.nfe(steps - 1)


def prepare(
    noise: Tensor, sigmas: Tensor, solver: str, correction: str, first: FirstStep | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor, Solver, int]:
    """Validate the common arguments; return (noise, sigmas) in ``dtype`` (float64 unless a fit asks for the
    model's), the solver and its evaluations (the analytic first evaluation included; under a ``flowmap``
    first step, those after it)."""
    solver_ = get_solver(solver)
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose one of {list(CORRECTIONS)}")
    if not isinstance(noise, torch.Tensor) or noise.ndim < 2:
        raise ValueError("noise must be a tensor of shape (batch, *sample_shape), e.g. torch.randn(16, 1, 8, 8)")
    if first is not None and not isinstance(first, FirstStep):
        raise ValueError("first must be a dode.core.gaussian.FirstStep (or None for the network's first step)")
    check_sigmas(sigmas)
    if first is not None and first.gaussian.dim != noise[0].numel():
        raise ValueError(f"the first step's Gaussian has {first.gaussian.dim} dimensions, a sample "
                         f"{noise[0].numel()}: build the Gaussian from this model's samples")
    nfe = solver_.nfe(solver_steps(sigmas, first))
    if nfe < 2:
        raise ValueError(
            f"solver {solver!r} on a {len(sigmas) - 1}-step grid makes {nfe} network evaluation(s); "
            "D-ODE needs at least 2: use a grid with more steps"
        )
    return noise.to(dtype), sigmas.to(device=noise.device, dtype=dtype), solver_, nfe


def evaluate(denoiser: Denoiser, x: Tensor, sigma: Tensor, k: int) -> Tensor:
    """D(x; sigma) in x's dtype, checked for shape and for NaN/inf (naming the evaluation index)."""
    out = denoiser(x, sigma.expand(len(x)))
    if out.shape != x.shape:
        raise ValueError(f"the denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)} at evaluation {k}")
    out = out.to(x.dtype)
    if not torch.isfinite(out).all():
        raise FloatingPointError(
            f"the denoiser returned NaN or inf at network evaluation {k} (sigma={float(sigma):.6g}); "
            "check the model, its dtype and the grid's sigma range"
        )
    return out


def dode_step(
    solver: Solver, sigmas: Tensor, state: SolverState, ev: Evaluation, basis_prev: Tensor | None, lam: float | Tensor, correction: str
) -> tuple[SolverState, Tensor, Tensor]:
    """One network evaluation's update, shared by ``integrate`` and ``DODEScheduler.step``: the D-ODE
    correction D~_k = D_k + lam_k (D_k - D_{k-1}) (Kim et al., 2024, eq. 9), then the solver's pure
    update with D~_k. Returns the next state, the basis the next correction extrapolates from and D~_k."""
    denoised = corrected_denoised(ev, basis_prev, lam, correction)
    return solver.advance(sigmas, state, ev, denoised), correction_basis(ev, correction), denoised


def integrate(
    denoiser: Denoiser,
    noise: Tensor,
    sigmas: Tensor,
    solver: str,
    lam_for: LambdaRule,
    *,
    correction: str = "data",
    on_state: StateHook | None = None,
    grad: bool = False,
    first: FirstStep | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Integrate the probability-flow ODE from sigmas[0] * noise to sigma = 0 with one base solver.

    The one loop of the project: ``sample`` passes given lambdas, ``distill`` fits them inside it, so
    the distilled trajectory and the sampled one cannot drift apart (Kim et al., 2024, Alg. 1 and 2).
    With ``grad`` the loop records gradients (lambda_k may then be tensors and ``sigmas`` may require
    grad, for objectives that differentiate through the sampler); by default it runs under no_grad.
    ``first`` (``dode.core.gaussian.FirstStep``) makes the evaluation at sigmas[0] without the network. The state
    is float64 unless ``dtype`` says otherwise (the ``final`` objective may fit in the model's float32).
    """
    with torch.set_grad_enabled(grad):
        noise, sigmas, solver_, nfe = prepare(noise, sigmas, solver, correction, first, dtype)
        x = noise * sigmas[0]
        offset = 0
        if first is not None and first.kind == "flowmap":  # the Gaussian's exact flow to sigmas[1]
            x, sigmas, offset = first.gaussian.flow(x, sigmas[0], sigmas[1]), sigmas[1:], 1
        analytic = first.gaussian if first is not None and first.kind == "analytic" else None
        steps = len(sigmas) - 1
        state = SolverState(x=x)
        basis_prev = noise if correction == "noise" else None  # eps_{-1} := x_T in the noise flavour
        for k in range(nfe):
            # Evaluate the denoiser (the Gaussian's closed form for an analytic first evaluation).
            sigma = sigmas[solver_.eval_index(k, steps)]
            ev = Evaluation(state.x, sigma, evaluate(analytic if k == 0 and analytic else denoiser, state.x, sigma, k))

            # D-ODE correction and solver update, as a function of lambda_k.
            def update(lam: float, state: SolverState = state, ev: Evaluation = ev, prev: Tensor | None = basis_prev) -> SolverState:
                return dode_step(solver_, sigmas, state, ev, prev, lam, correction)[0]

            state, basis_prev, _ = dode_step(solver_, sigmas, state, ev, basis_prev, lam_for(k, update), correction)
            if on_state is not None:
                on_state(offset + solver_.out_index(k, steps), state.x, ev)
        return state.x


def sample(
    denoiser: Denoiser,
    noise: Tensor,
    sigmas: Tensor | None = None,
    solver: str | None = None,
    lambdas: Lambdas | None = None,
    *,
    correction: str | None = None,
    on_state: StateHook | None = None,
    first: FirstStep | None = None,
) -> Tensor:
    """Sample x0 from unit ``noise`` (B, *shape) on the grid ``sigmas``, with D-ODE ``lambdas`` if given.

    Without lambdas this is the base solver (default euler) on ``sigmas``; with them, D~_k = D_k +
    lambda_k (D_k - D_{k-1}) at no extra network evaluations, on the grid they were fitted on: ``sigmas``
    may be omitted (they imply it) and must otherwise be that grid (``dode.core.fitted``); solver and correction
    likewise default to theirs. ``first``: an analytic first step (``dode.core.gaussian.FirstStep``); lambdas
    fitted with one carry it and use it. Returns float64 (B, *shape).
    """
    if lambdas is None:
        if sigmas is None:
            raise ValueError("pass sigmas (the grid to sample on), or lambdas (which imply the grid they were fitted on)")
        return integrate(denoiser, noise, sigmas, solver or DEFAULT_SOLVER, lambda k, update: 0.0,
                         correction=correction or "data", on_state=on_state, first=first)
    solver, correction = solver or lambdas.solver, correction or lambdas.correction
    check_sampler(lambdas, solver, correction)
    first = implied_first(lambdas, first)
    _, sigmas64, _, nfe = prepare(noise, fitted_grid(lambdas) if sigmas is None else sigmas, solver, correction, first)
    sigmas = implied_grid(lambdas, sigmas64)
    if lambdas.nfe != nfe:
        raise ValueError(f"{lambdas.nfe} lambdas for a solver that makes {nfe} evaluations; distill new lambdas")
    values = lambdas.values
    return integrate(denoiser, noise, sigmas, solver, lambda k, update: values[k], correction=correction,
                     on_state=on_state, first=first)
