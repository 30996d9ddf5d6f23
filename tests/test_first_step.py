"""The analytic first step (dode.core.gaussian): exact on Gaussians, counted network calls, low rank, round trips."""

import json

import pytest
import torch

import dode
from dode.core.gaussian import FirstStep, Gaussian, first_step
from dode.core.sampling import network_calls
from dode.store.lambdas import lambdas_from_json, lambdas_to_json
from tests.helpers import Counting

D = 12


def planted(rank: int | None = None, rest: float = 0.0, seed: int = 0) -> Gaussian:
    """An anisotropic Gaussian over (1, 3, 4) with a random orthonormal basis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    k = rank or D
    variances = torch.logspace(0, -2, k, dtype=torch.float64) * 0.5
    return Gaussian(torch.randn(1, 3, 4, generator=g, dtype=torch.float64) * 0.3, q[:, :k], variances, rest)


def covariance(gauss: Gaussian) -> torch.Tensor:
    v = gauss.basis
    return v @ torch.diag(gauss.variances) @ v.T + gauss.rest * (torch.eye(D, dtype=torch.float64) - v @ v.T)


def exact_samples(gauss: Gaussian, n: int) -> torch.Tensor:
    """n points whose sample mean and covariance are exactly the Gaussian's (to rounding)."""
    z = torch.randn(n, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = z - z.mean(0)
    w, v = torch.linalg.eigh(z.T @ z / (n - 1))
    z = z @ v @ torch.diag(w.rsqrt()) @ v.T  # identity sample covariance
    w, v = torch.linalg.eigh(covariance(gauss))
    root = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    return (gauss.mean.reshape(1, -1) + z @ root).reshape(n, 1, 3, 4)


def test_denoiser_is_the_posterior_mean():
    gauss, x = planted(), torch.randn(5, 1, 3, 4, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 3.0, 20.0, 80.0], dtype=torch.float64)
    cov = covariance(gauss)
    for i, s in enumerate(sigma):
        y = x[i].reshape(-1) - gauss.mean.reshape(-1)
        want = gauss.mean.reshape(-1) + cov @ torch.linalg.solve(cov + s**2 * torch.eye(D, dtype=torch.float64), y)
        torch.testing.assert_close(gauss.denoise(x, sigma)[i].reshape(-1), want, rtol=1e-12, atol=1e-12)


def test_flow_map_solves_the_probability_flow_ode():
    """Heun's solution of dx/dsigma = (x - D) / sigma converges to the flow map at second order."""
    gauss, noise = planted(), torch.randn(8, 1, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = gauss.flow(noise * 80.0, torch.tensor(80.0), torch.tensor(0.01))
    errors = []
    for steps in (100, 200, 400):
        sigmas = torch.cat([dode.karras_sigmas(steps, 0.01, 80.0)[:-1], torch.zeros(1, dtype=torch.float64)])
        states = {}
        dode.sample(gauss, noise, sigmas, "heun", on_state=lambda i, x, ev, s=states: s.__setitem__(i, x))
        errors.append(float((states[steps - 1] - exact).abs().max()))
    assert errors[2] < 2e-4
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "unipc", "ipndm", "dpm_solver_2"])
def test_analytic_first_step_is_exact_on_a_gaussian_model(solver):
    """With the model's own Gaussian the first evaluation is the network's, to rounding: same samples."""
    gauss = planted()
    noise = torch.randn(6, 1, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigmas = dode.karras_sigmas(6, 0.002, 80.0)
    plain = dode.sample(gauss, noise, sigmas, solver)
    first = dode.sample(gauss, noise, sigmas, solver, first=FirstStep("analytic", gauss))
    torch.testing.assert_close(first, plain, rtol=1e-10, atol=1e-10)


def test_flowmap_first_step_is_exact_on_a_gaussian_model():
    """On a Gaussian model the flow map is the exact ODE: flowmap + 2 Euler steps equals the exact solution
    from sigmas[1] solved by the same 2 Euler steps."""
    gauss = planted()
    noise = torch.randn(6, 1, 3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigmas = dode.karras_sigmas(3, 0.002, 80.0)
    got = dode.sample(gauss, noise, sigmas, "euler", first=FirstStep("flowmap", gauss))
    x1 = gauss.flow(noise * sigmas[0], sigmas[0], sigmas[1])
    rest = dode.sample(gauss, x1 / sigmas[1], sigmas[1:], "euler")
    torch.testing.assert_close(got, rest, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("solver", "kind", "steps", "calls"),
                         [("euler", "analytic", 4, 3), ("dpmpp_2m", "analytic", 3, 2), ("heun", "analytic", 3, 4),
                          ("euler", "flowmap", 4, 3), ("heun", "flowmap", 3, 3), ("unipc", "analytic", 5, 4)])
def test_network_calls_are_counted(solver, kind, steps, calls):
    gauss = planted()
    counting = Counting(gauss)
    noise = torch.randn(4, 1, 3, 4, dtype=torch.float64)
    dode.sample(counting, noise, dode.karras_sigmas(steps, 0.002, 80.0), solver, first=FirstStep(kind, gauss))
    assert counting.calls == calls == network_calls(solver, steps, FirstStep(kind, gauss))
    counting.calls = 0
    dode.sample(counting, noise, dode.karras_sigmas(steps, 0.002, 80.0), solver)
    assert counting.calls == network_calls(solver, steps) == calls + (1 if kind == "analytic" else
                                                                       dode.get_solver(solver).evals_per_step)


def test_fit_recovers_mean_and_covariance():
    gauss = planted()
    fitted = Gaussian.fit(exact_samples(gauss, 400))
    assert fitted.rank == D and fitted.rest == 0.0
    torch.testing.assert_close(covariance(fitted), covariance(gauss), rtol=0, atol=1e-10)
    torch.testing.assert_close(fitted.mean, gauss.mean, rtol=0, atol=1e-12)


def test_low_rank_agrees_with_full_where_both_fit():
    """A covariance of 4 eigenpairs plus an isotropic rest: the rank-4 fit and the full fit give the same
    denoiser and flow map, and the rest is the mean variance outside the basis."""
    truth = planted(rank=4, rest=0.004)
    samples = exact_samples(truth, 300)
    full, low = Gaussian.fit(samples), Gaussian.fit(samples, rank=4)
    assert low.rank == 4 and low.rest == pytest.approx(0.004, rel=1e-9)
    x = torch.randn(7, 1, 3, 4, dtype=torch.float64)
    for sigma in (0.05, 1.0, 80.0):
        s = torch.tensor(sigma, dtype=torch.float64)
        torch.testing.assert_close(low.denoise(x, s), full.denoise(x, s), rtol=0, atol=1e-9)
        torch.testing.assert_close(low.flow(x, torch.tensor(80.0), s), full.flow(x, torch.tensor(80.0), s),
                                   rtol=0, atol=1e-8)


def test_round_trip_and_fingerprint():
    gauss = Gaussian.fit(exact_samples(planted(rank=3, rest=0.01), 100), rank=3, model="abc", source={"n": 100})
    back = Gaussian.from_dict(json.loads(json.dumps(gauss.to_dict())))
    assert back.fingerprint == gauss.fingerprint and back.model == "abc" and back.source == {"n": 100}
    assert torch.equal(back.basis, gauss.basis) and back.rest == gauss.rest
    other = Gaussian(gauss.mean + 1e-12, gauss.basis, gauss.variances, gauss.rest)
    assert other.fingerprint != gauss.fingerprint


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("basis"),
    lambda d: d.update(schema_version=99),
    lambda d: d["mean"].update(shape=[1, 3, 5]),
    lambda d: d["variances"].update(float64_le="%%%"),
    lambda d: d.update(rest=-1.0),
    lambda d: d.update(rest="x"),
    lambda d: d.update(extra=1),
])
def test_malformed_gaussians_are_one_value_error(mutate):
    data = planted(rank=2, rest=0.1).to_dict()
    mutate(data)
    with pytest.raises(ValueError, match="gaussian|Gaussian"):
        Gaussian.from_dict(data)


def test_lambdas_carry_their_first_step():
    gauss = planted()
    noise = torch.randn(32, 1, 3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sigmas = dode.karras_sigmas(4, 0.002, 80.0)
    lam = dode.distill(gauss, noise, sigmas, "dpmpp_2m", fit={"guard": False}, first=FirstStep("analytic", gauss))
    back = lambdas_from_json(lambdas_to_json(lam))
    assert back.first.kind == "analytic" and back.first.gaussian.fingerprint == gauss.fingerprint
    counting = Counting(gauss)
    x = dode.sample(counting, noise[:4], sigmas, "dpmpp_2m", back)
    assert counting.calls == 3
    torch.testing.assert_close(x, dode.sample(gauss, noise[:4], sigmas, "dpmpp_2m", lam), rtol=0, atol=0)
    with pytest.raises(ValueError, match="first step"):
        dode.sample(gauss, noise[:4], sigmas, "dpmpp_2m", back, first=FirstStep("flowmap", gauss))
    with pytest.raises(ValueError, match="first step"):
        dode.sample(gauss, noise[:4], sigmas, "dpmpp_2m", dode.Lambdas(lam.values, "dpmpp_2m", lam.sigmas),
                    first=FirstStep("analytic", gauss))


def test_first_step_choices_and_dimension_checks():
    with pytest.raises(ValueError, match="network"):
        first_step("teleport", planted())
    with pytest.raises(ValueError, match="needs a Gaussian"):
        first_step("analytic", None)
    assert first_step("network", None) is None
    with pytest.raises(ValueError, match="dimensions"):
        dode.sample(planted(), torch.randn(2, 1, 4, 4), dode.karras_sigmas(3, 0.002, 80.0), "euler",
                    first=FirstStep("analytic", planted()))
