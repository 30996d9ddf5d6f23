"""The held-out guard: never hand back fitted parameters that do worse than the base solver on noise the
fit did not see. Candidates are the objective's result, its alternatives and the base solver on the start
grid; each samples the held-out noise and is compared to the teacher's held-out final samples by mean
squared error (``mse``) or, for objectives that may trade per-sample error for a better distribution,
by the Frechet distance of their distributions (``fd``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .correction import Lambdas
from .objectives.problem import FitProblem, FitResult
from .sampling import sample
from .types import Tensor

Features = Callable[[Tensor], Tensor]  # (n, *shape) samples -> (n, f) features
CRITERIA: tuple[str, ...] = ("mse", "fd")


def frechet(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature rows a and b (Dowson & Landau, 1982), float64:
    ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), via symmetric eigensolves."""
    a, b = a.to(torch.float64).cpu(), b.to(torch.float64).cpu()
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    w, v = torch.linalg.eigh(cov_a)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def projection(reference: Tensor, n: int) -> Tensor | None:
    """Where the feature dimension exceeds the held-out count n, the top n // 4 principal directions of the
    reference (teacher) features, so covariances stay estimable; None otherwise."""
    if reference.shape[1] <= n:
        return None
    centred = reference - reference.mean(0)
    return torch.linalg.svd(centred, full_matrices=False).Vh[: max(1, n // 4)].T


def candidates(problem: FitProblem, result: FitResult) -> list[tuple[str, tuple[float, ...], Tensor]]:
    """The result, its alternatives, and the base solver (lambda = 0 on the start grid), in preference order."""
    base = ("base", tuple(0.0 * v for v in result.values), problem.sigmas)
    return [(result.name, result.values, result.sigmas), *result.alternatives, base]


def held_out_samples(problem: FitProblem, values: tuple[float, ...], sigmas: Tensor, name: str) -> Tensor:
    """A candidate's samples from the held-out noise."""
    first = problem.first.to_dict() if problem.first is not None else {}
    lam = None if name == "base" else Lambdas(values, problem.solver, sigmas.tolist(), problem.correction, first_step=first)
    return sample(problem.denoiser, problem.heldout_noise, sigmas, problem.solver, lam, correction=problem.correction,
                  first=problem.first if lam is None else None)


def select(problem: FitProblem, result: FitResult, features: Features | None = None) -> tuple[str, dict]:
    """The guard's choice and its report (every candidate's held-out MSE, and Frechet distance for ``fd``).

    ``mse``: the smallest held-out final error (ties go to the earlier candidate). ``fd``: the first
    candidate, in preference order, whose held-out samples are no further from the teacher's in
    distribution than the base solver's: the Frechet distance in ``features`` (default: pixels, projected
    as ``projection`` says). The objective's own result comes first: it was already selected on held-out
    error, so the distribution only decides whether it may be used.
    """
    if result.criterion not in CRITERIA:
        raise ValueError(f"unknown guard criterion {result.criterion!r}; choose one of {list(CRITERIA)}")
    feat = features or (lambda x: x.reshape(len(x), -1))
    ref = feat(problem.heldout_final).to(torch.float64)
    proj = projection(ref, len(ref))
    mse, fd = {}, {}
    for name, values, sigmas in candidates(problem, result):
        x = held_out_samples(problem, values, sigmas, name)
        mse[name] = float((x - problem.heldout_final).square().mean())
        if result.criterion == "fd":
            f = feat(x).to(torch.float64)
            fd[name] = frechet(f, ref) if proj is None else frechet(f @ proj, ref @ proj)
    if result.criterion == "mse":
        chosen = min(mse, key=lambda k: mse[k])
    else:
        chosen = next(k for k in fd if fd[k] <= fd["base"])
    report = {"holdout": len(problem.heldout_noise), "criterion": result.criterion, "chosen": chosen,
              "changed": chosen != result.name, "fitted": list(result.values), "mse": mse}
    return chosen, {**report, "fd": fd} if fd else report
