"""The contract every registered objective keeps, parametrized over ``OBJECTIVES`` (a new one is tested unedited)."""

import pytest
import torch
from helpers import one_thread  # noqa: F401  (autouse: one thread)

import dode
from dode.distillation.config import FitConfig
from dode.distillation.fit import fit_guarded
from dode.distillation.objectives import OBJECTIVES
from dode.models import digits_mixture

SOLVER = "euler"
SIGMAS = dode.karras_sigmas(4, 0.002, 80.0)
PLANTED = (0.0, 0.3, -0.2, 0.25)  # lambda_0 has no previous output in the data flavour


@pytest.fixture(scope="module")
def mixture():
    return digits_mixture(0.3)


def noise(n, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def states(den, x, values):
    """The state after each evaluation of Euler with ``values`` as lambda: a teacher whose targets are known."""
    out = []
    dode.sample(den, x, SIGMAS, SOLVER, dode.Lambdas(values, SOLVER, SIGMAS.tolist()),
                on_state=lambda i, s, ev: out.append(s))
    return out


def fit(den, x, targets, objective):
    return fit_guarded(den, x, SIGMAS, SOLVER, targets, {}, FitConfig(guard=False, objective=objective))


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_an_objective_given_the_base_solvers_own_trajectory_changes_nothing(objective, mixture):
    # Targets that the base solver already reaches: lambda = 0 on the start grid is an exact optimum.
    x = noise(32)
    lam = fit(mixture, x, states(mixture, x, (0.0,) * 4), objective)
    assert lam.objective == objective and lam.nfe == 4
    assert lam.values == pytest.approx((0.0,) * 4, abs=1e-9)
    assert lam.sigmas == pytest.approx(SIGMAS.tolist(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_an_objective_fitted_to_a_planted_teacher_moves_towards_it_on_fresh_noise(objective, mixture):
    # The teacher is Euler with PLANTED lambdas; judged on 256 noises the fit never saw, against the base.
    lam = fit(mixture, noise(32), states(mixture, noise(32), PLANTED), objective)
    fresh = noise(256, seed=7)
    teacher = states(mixture, fresh, PLANTED)[-1]
    grid = torch.tensor(lam.sigmas, dtype=torch.float64)
    fitted = (dode.sample(mixture, fresh, grid, SOLVER, lam) - teacher).square().mean()
    base = (dode.sample(mixture, fresh, SIGMAS, SOLVER) - teacher).square().mean()
    assert fitted < 0.25 * base
