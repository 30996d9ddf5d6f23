"""Small helpers shared by test modules."""

import pytest
import torch

import dode
from dode.distillation.objectives import FitProblem
from dode.distillation.objectives.step import greedy_lambdas


@pytest.fixture(autouse=True)
def one_thread():
    """8x8 batches gain nothing from a second thread, and lose up to 5x when the cores are shared
    (autouse where imported)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def greedy_fit(denoiser, noise, sigmas, solver, targets, *, correction="data"):
    """The greedy ``step`` fit on the whole batch: (lambdas, the final state sampled with them)."""
    noise, sigmas = noise.to(torch.float64), sigmas.to(torch.float64)
    empty = noise[:0]
    problem = FitProblem(denoiser, noise, sigmas, solver, correction, tuple(t.to(torch.float64) for t in targets),
                         empty, empty, empty, empty)
    values = greedy_lambdas(problem)
    lam = dode.Lambdas(values, solver, sigmas.tolist(), correction)
    return values, dode.sample(denoiser, noise, sigmas, solver, lam, correction=correction)


class Counting:
    """A denoiser that counts its network calls."""

    def __init__(self, den):
        self.den, self.calls = den, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.den(x, sigma)
