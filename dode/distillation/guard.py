"""The held-out guard: never hand back fitted parameters unless they clearly beat the base solver on noise
neither the fit nor the selection of iterations saw. Candidates are the objective's result, its
alternatives and the base solver on the caller's grid (the grid ``dode.distill`` was given, whatever grid
the fit started from); each samples the guard's noise and is compared to the teacher's final samples from
that noise by mean squared error (``mse``) or, for objectives that may trade per-sample error for a better
distribution, by the Frechet distance of their distributions (``fd``).

Enough samples: the Frechet distance of n guard samples is measured in at most n / SAMPLES_PER_FEATURE
feature dimensions (the top principal directions of the teacher's features where there are more), so each
covariance entry rests on at least 8 samples per dimension.

Clearly: a paired bootstrap over the guard's samples (Efron & Tibshirani, 1993, ch. 6) resamples the
same rows for every candidate, the base and the teacher, and gives each candidate's difference to another
a one-sided interval. Candidates are walked from the simplest (the base) to the most elaborate (the
objective's result); one replaces the current choice only when the upper ``CONFIDENCE`` quantile of its
measure minus the current choice's stays below zero. A candidate within the guard's noise of a simpler one
is refused, so rounding differences between machines cannot flip the choice on a near-tie. The report
states the guard's noise: the bootstrap standard deviation of the base's measure.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dode.core.sampling import integrate
from dode.core.types import Tensor
from dode.distillation.objectives.problem import FitProblem, FitResult

Features = Callable[[Tensor], Tensor]  # (n, *shape) samples -> (n, f) features; its ``name`` is reported
CRITERIA: tuple[str, ...] = ("mse", "fd")
RESAMPLES = 400  # bootstrap resamples of the guard's rows
CONFIDENCE = 0.95  # one-sided: a candidate is taken when this quantile of (candidate - base) is below zero
SEED = 0  # the bootstrap's own generator: independent of torch's global random state
CHUNK = 50  # resamples per batched eigensolve (bounds memory at CHUNK f^2 floats)
TIE = 1e-9  # relative: measures closer than this are equal (rounding must not decide)
SAMPLES_PER_FEATURE = 8  # the Frechet distance is measured in at most n_guard / 8 feature dimensions


def resample_weights(n: int, resamples: int = RESAMPLES) -> Tensor:
    """(resamples, n) counts of each row in a bootstrap resample of n rows (each row sums to n), from a
    generator seeded with SEED, so the same n always gives the same resamples."""
    rows = torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(SEED))
    return torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(1, rows, torch.ones_like(rows, dtype=torch.float64))


def moments(x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (B, f) and unbiased covariance (B, f, f) of the rows of x (n, f) repeated ``weights`` (B, n)
    times: the moments torch.mean / torch.cov give on each resampled set of n rows."""
    n, centre = x.shape[0], x.mean(0)
    x = x - centre  # covariances are shift-invariant; centring first avoids cancellation
    shift = weights @ x / n
    second = torch.einsum("bn,ni,nj->bij", weights, x, x)
    return centre + shift, (second - n * shift[:, :, None] * shift[:, None, :]) / (n - 1)


def frechet_weighted(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """The Frechet distance (Dowson & Landau, 1982) between Gaussians fitted to feature rows a and b, once
    per row of ``weights`` (paired: the same rows of a and b): ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b)
    - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), via symmetric eigensolves, float64."""
    a, b = a.to(torch.float64).cpu(), b.to(torch.float64).cpu()
    out = []
    for chunk in weights.split(CHUNK):
        mean_a, cov_a = moments(a, chunk)
        mean_b, cov_b = moments(b, chunk)
        w, v = torch.linalg.eigh(cov_a)
        root_a = (v * w.clamp(min=0).sqrt()[:, None, :]) @ v.mT
        cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum(-1)
        traces = cov_a.diagonal(dim1=1, dim2=2).sum(-1) + cov_b.diagonal(dim1=1, dim2=2).sum(-1)
        out.append((mean_a - mean_b).square().sum(-1) + traces - 2 * cross)
    return torch.cat(out)


def frechet(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to all feature rows of a and b (see ``frechet_weighted``)."""
    return float(frechet_weighted(a, b, torch.ones(1, len(a), dtype=torch.float64))[0])


def projection(reference: Tensor, n: int) -> Tensor | None:
    """The guard's feature rule: with n guard samples the Frechet distance is measured in at most
    f = n // SAMPLES_PER_FEATURE dimensions (at least 8 samples per dimension keeps the covariance
    estimable); where the features have more, their projection on the top f principal directions of the
    reference (teacher) features. None where they have no more."""
    f = max(1, n // SAMPLES_PER_FEATURE)
    if reference.shape[1] <= f:
        return None
    centred = reference - reference.mean(0)
    return torch.linalg.svd(centred, full_matrices=False).Vh[:f].T


def candidates(problem: FitProblem, result: FitResult) -> list[tuple[str, tuple[float, ...], Tensor]]:
    """The result, its alternatives, and the base solver (lambda = 0 on the caller's grid, ``problem.sigmas``:
    the grid ``dode.distill`` was given), from the most elaborate to the simplest."""
    base = ("base", tuple(0.0 * v for v in result.values), problem.sigmas)
    return [(result.name, result.values, result.sigmas), *result.alternatives, base]


def held_out_samples(problem: FitProblem, values: tuple[float, ...], sigmas: Tensor) -> Tensor:
    """A candidate's samples from the guard's noise (the sampler ``dode.sample`` runs, with the problem's first step)."""
    return integrate(problem.denoiser, problem.heldout_noise, sigmas, problem.solver, lambda k, update: values[k],
                     correction=problem.correction, first=problem.first)


def decide(measure: dict[str, float], resampled: dict[str, Tensor]) -> tuple[str, dict[str, list[float]]]:
    """The choice among candidates by their ``measure`` (lower is better), listed from the most elaborate to
    the simplest, one of them ``base``, and its bootstrap ``resampled`` values (paired: the same resamples
    for every candidate). Walking from the base through the others from the simplest, a candidate replaces
    the current choice when the CONFIDENCE quantile of (candidate - current) over the resamples is below
    zero by more than rounding (TIE of the current measure). Also each candidate's interval of its
    difference to the base, between its 1 - CONFIDENCE and CONFIDENCE quantiles."""
    levels = torch.tensor([1 - CONFIDENCE, CONFIDENCE], dtype=torch.float64)
    interval = {k: torch.quantile(r - resampled["base"], levels).tolist() for k, r in resampled.items() if k != "base"}
    chosen = "base"
    for k in reversed([k for k in measure if k != "base"]):
        upper = float(torch.quantile(resampled[k] - resampled[chosen], CONFIDENCE))
        if upper < -TIE * abs(measure[chosen]):
            chosen = k
    return chosen, interval


def select(problem: FitProblem, result: FitResult, features: Features | None = None) -> tuple[str, dict]:
    """The guard's choice and its report: every candidate's MSE (and Frechet distance for ``fd``) on the
    guard's split, the bootstrap interval of each candidate's difference to the base, and the choice
    (``decide``). ``fd`` measures in ``features`` (default: pixels), projected as ``projection`` says; the
    report names them (``feature_map``: the map's ``name`` attribute, "pixels" for the default)."""
    if result.criterion not in CRITERIA:
        raise ValueError(f"unknown guard criterion {result.criterion!r}; choose one of {list(CRITERIA)}")
    feat = features or (lambda x: x.reshape(len(x), -1))
    n = len(problem.heldout_noise)
    weights = resample_weights(n)
    ref = feat(problem.heldout_final).to(torch.float64).cpu()
    proj = projection(ref, n) if result.criterion == "fd" else None
    ref = ref if proj is None else ref @ proj
    mse, fd, resampled = {}, {}, {}
    for name, values, sigmas in candidates(problem, result):
        x = held_out_samples(problem, values, sigmas)
        errors = (x - problem.heldout_final).reshape(n, -1).square().mean(1).to(torch.float64).cpu()
        mse[name] = float(errors.mean())
        if result.criterion == "mse":
            resampled[name] = weights @ errors / n
        else:
            f = feat(x).to(torch.float64).cpu()
            f = f if proj is None else f @ proj
            fd[name] = frechet(f, ref)
            resampled[name] = frechet_weighted(f, ref, weights)
    chosen, interval = decide(mse if result.criterion == "mse" else fd, resampled)
    report = {"split": {"fit": len(problem.noise), "selection": len(problem.selection_noise), "guard": n},
              "criterion": result.criterion, "chosen": chosen, "changed": chosen != result.name,
              "fitted": list(result.values), "mse": mse, "minus_base": interval,
              "noise": float(resampled["base"].std()),
              "bootstrap": {"resamples": RESAMPLES, "confidence": CONFIDENCE, "seed": SEED}}
    if not fd:
        return chosen, report
    name = "pixels" if features is None else getattr(features, "name", type(features).__name__)
    return chosen, {**report, "fd": fd, "features": ref.shape[1], "feature_map": name}
