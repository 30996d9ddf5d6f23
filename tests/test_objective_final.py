"""The ``final`` objective: lambda and timesteps fitted on the final sample through the unrolled sampler."""

import json

import pytest
import torch
from helpers import Counting

import dode
from dode.core.fitted import implied_grid
from dode.distillation.guard import frechet, select
from dode.distillation.objectives import OBJECTIVES, FitProblem, FitResult
from dode.distillation.objectives.final import FinalOptions, LogSigmaGrid, accumulate, final_sample, fit_final
from dode.models import GaussianDenoiser, digits_mixture
from dode.store.lambdas import lambdas_from_json, lambdas_to_json


@pytest.fixture(scope="module")
def mixture():
    return digits_mixture(0.3)


def noise(n, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def problem(den, x, sigmas, solver, targets, held=0):
    n, final = len(x) - held, targets[-1]
    return FitProblem(den, x[:n], sigmas, solver, "data", tuple(t[:n] for t in targets), x[n:], final[n:], x[:0],
                      final[:0])


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "heun", "unipc", "deis"])
def test_gradient_matches_finite_differences(mixture, solver):
    sigmas = dode.karras_sigmas(3 if solver == "heun" else 4, 0.002, 80.0)
    x = noise(6)
    teacher = dode.sample(mixture, x, dode.refine(sigmas, 5), "dpmpp_2m")
    nfe = dode.get_solver(solver).nfe(len(sigmas) - 1)
    p = problem(mixture, x, sigmas, solver, [teacher] * nfe)
    lam = (0.1 * torch.randn(nfe, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).requires_grad_()
    grid = LogSigmaGrid(sigmas, 0.001)
    theta = grid.u.requires_grad_()
    accumulate(p, mixture, lam, grid, 4, [lam, theta])

    def loss():
        with torch.no_grad():
            return float((final_sample(p, mixture, lam, grid(), slice(None), False) - teacher).square().mean())

    for leaf in (lam, theta):
        for i in range(len(leaf)):
            with torch.no_grad():
                leaf[i] += 1e-6
                up = loss()
                leaf[i] -= 2e-6
                down = loss()
                leaf[i] += 1e-6
            assert (up - down) / 2e-6 == pytest.approx(float(leaf.grad[i]), rel=1e-5, abs=1e-10)


@pytest.mark.parametrize("learn_lambdas", [True, False])
def test_learned_grid_and_lambdas_beat_the_start_grid_on_a_gaussian(learn_lambdas):
    den = GaussianDenoiser(torch.full((1, 8, 8), 0.2), 0.5)
    sigmas = dode.karras_sigmas(3, 0.01, 80.0)
    lam = dode.distill(den, noise(32), sigmas, "euler", fit={"guard": False, "objective": "final", "options": {
        "iterations": 60, "lr_sigmas": 0.1, "learn_lambdas": learn_lambdas}})
    fresh = noise(64, seed=5)
    exact = den.mu + (0.5 / (0.5**2 + 80.0**2) ** 0.5) * 80.0 * fresh  # the ODE's closed-form solution at sigma 0
    base = (dode.sample(den, fresh, sigmas, "euler") - exact).square().mean()
    learned = torch.tensor(lam.sigmas, dtype=torch.float64)
    fitted = (dode.sample(den, fresh, learned, "euler", lam) - exact).square().mean()
    assert fitted < (0.1 if learn_lambdas else 0.5) * base
    if not learn_lambdas:  # the timesteps alone did it
        assert lam.values == (0.0,) * 3 and not torch.allclose(learned, sigmas)


def test_planted_lambdas_are_recovered_from_the_final_sample_alone(mixture):
    sigmas, x = dode.karras_sigmas(4, 0.002, 80.0), noise(16)
    planted = [0.0, 0.3, -0.2, 0.15]
    final = dode.sample(mixture, x, sigmas, "euler", dode.Lambdas(planted, "euler", sigmas.tolist()))
    states = {}
    dode.sample(mixture, x, sigmas, "euler", on_state=lambda i, s, ev: states.__setitem__(i, s))
    targets = [states[1], states[2], states[3], final]  # intermediate targets from the base solver: greedy starts off
    result = fit_final(problem(mixture, x, sigmas, "euler", targets), FinalOptions(
        learn_sigmas=False, optimizer="lbfgs", iterations=60, patience=60, init="zero"))
    assert result.values[1:] == pytest.approx(planted[1:], abs=1e-6)  # lambda_0 has no effect in the data flavour


def test_every_learned_sigma_moves_even_one_at_the_floor(mixture):
    # Issue 26: a Karras grid ending at the floor (the model's sigma_min) left the last gap of the softmax-cumsum
    # parameterisation empty and its sigma pinned. Three Adam steps on the grid alone: each learned log sigma
    # must move at least a fifth as far as the one that moves most.
    sigmas, x = dode.karras_sigmas(4, 0.002, 80.0), noise(16)
    teacher = dode.sample(mixture, x, dode.refine(sigmas, 5), "dpmpp_2m")
    p = problem(mixture, x, sigmas, "dpmpp_2m", [teacher] * 4)
    grid = LogSigmaGrid(sigmas, 0.002)
    assert torch.allclose(grid(), sigmas, rtol=1e-12, atol=0)  # the start grid, its last sigma on the floor
    lam = torch.zeros(4, dtype=torch.float64)
    adam = torch.optim.Adam([grid.u.requires_grad_()], lr=0.1)
    for _ in range(3):
        adam.zero_grad()
        accumulate(p, mixture, lam, grid, 16, [grid.u])
        adam.step()
        grid.project()
    moved = (grid()[1:-1].log() - sigmas[1:-1].log()).abs().detach()
    assert float(moved.min()) > 0.2 * float(moved.max()) > 0
    learned = grid().detach()
    assert (learned[1:] < learned[:-1]).all() and float(learned[-2]) >= 0.002


def test_projection_keeps_any_step_a_strictly_decreasing_grid_in_its_bounds():
    grid = LogSigmaGrid(dode.karras_sigmas(5, 0.01, 80.0), 0.01)
    with torch.no_grad():
        grid.u.copy_(torch.tensor([-9.0, 6.0, 0.5, 0.5], dtype=torch.float64))  # below the floor, above sigma_max, a tie
    grid.project()
    s = grid()
    assert (s[1:] < s[:-1]).all() and float(s[-2]) == pytest.approx(0.01) and float(s[1]) < 80.0


def test_the_fit_may_start_elsewhere_and_the_guard_still_judges_against_the_callers_grid(mixture):
    sigmas = dode.karras_sigmas(3, 0.002, 80.0)
    lam = dode.distill(mixture, noise(24), sigmas, "dpmpp_2m", fit={"objective": "final", "options": {
        "iterations": 2, "start_sigma_min": 0.1}})
    assert lam.fit["start_sigmas"] == sigmas.tolist() and lam.options["start_sigma_min"] == 0.1
    if lam.guard["chosen"] == "base":
        assert list(lam.sigmas) == sigmas.tolist()
    with pytest.raises(ValueError, match="start_sigma_min must lie below"):
        dode.distill(mixture, noise(24), sigmas, "dpmpp_2m", fit={"objective": "final", "options": {
            "iterations": 2, "start_sigma_min": 100.0}})
    with pytest.raises(ValueError, match="start_sigma_min moves the grid the fit starts from"):
        dode.distill(mixture, noise(24), sigmas, "dpmpp_2m", fit={"objective": "final", "options": {
            "learn_sigmas": False, "start_sigma_min": 0.1}})


def test_micro_batches_give_the_parameters_of_one_full_batch(mixture):
    sigmas, x = dode.karras_sigmas(4, 0.002, 80.0), noise(12)
    teacher = dode.sample(mixture, x, dode.refine(sigmas, 4), "euler")
    p = problem(mixture, x, sigmas, "dpmpp_2m", [teacher] * 4)
    whole = fit_final(p, FinalOptions(iterations=4, micro_batch=12, patience=10, eval_every=1))
    parts = fit_final(p, FinalOptions(iterations=4, micro_batch=5, patience=10, eval_every=1))
    assert parts.values == pytest.approx(whole.values, abs=1e-10)
    assert torch.allclose(parts.sigmas, whole.sigmas, rtol=0, atol=1e-10)


def test_learned_grids_are_valid_survive_json_and_cost_the_base_nfe(mixture):
    sigmas = dode.karras_sigmas(5, 0.02, 80.0)
    lam = dode.distill(mixture, noise(24), sigmas, "dpmpp_2m", fit={"objective": "final", "guard": False, "options": {
        "iterations": 20, "lr_sigmas": 0.3, "lr_lambdas": 0.3}})
    grid = torch.tensor(lam.sigmas, dtype=torch.float64)
    assert (grid[1:] < grid[:-1]).all() and grid[-1] == 0 and grid[0] == sigmas[0]
    assert lam.fit["sigma_lo"] <= float(grid[-2]) and not torch.allclose(grid, sigmas)
    again = lambdas_from_json(lambdas_to_json(lam))
    assert again == lam and again.objective == "final" and again.options["iterations"] == 20
    assert json.loads(lambdas_to_json(lam))["fit"]["iterations"] == lam.fit["iterations"]
    base, corrected = Counting(mixture), Counting(mixture)
    dode.sample(base, noise(3), sigmas, "dpmpp_2m")
    dode.sample(corrected, noise(3), grid, "dpmpp_2m", again)
    assert base.calls == corrected.calls == 5


def test_guard_rejects_a_result_further_than_the_base_in_distribution(mixture):
    sigmas, x = dode.karras_sigmas(4, 0.002, 80.0), noise(48)
    teacher = dode.sample(mixture, x, dode.refine(sigmas, 5), "dpmpp_2m")
    p = problem(mixture, x, sigmas, "dpmpp_2m", [teacher] * 4, held=40)
    overfit = FitResult((0.0, 2.0, -1.5, 2.0), dode.karras_sigmas(4, 0.002, 80.0, 1.0),
                        "final", {}, (("greedy", (0.0, 0.0, 0.0, 0.0), sigmas),), "fd")
    chosen, report = select(p, overfit, None)
    assert report["fd"]["final"] > report["fd"]["base"] and report["minus_base"]["final"][0] > 0
    # "greedy" here is the base itself: never clearly better than it
    assert chosen == "base" and report["minus_base"]["greedy"] == [0.0, 0.0]


def test_guard_takes_an_overfit_final_only_when_it_clearly_helps_on_fresh_noise(mixture):
    # Five fit samples, aggressive steps, no early stop: "final" overfits; the guard judges on 41 others.
    sigmas = dode.karras_sigmas(4, 0.002, 80.0)
    lam = dode.distill(mixture, noise(48), sigmas, "dpmpp_2m", fit={"holdout": 0.85, "selection": 0.05,
                       "objective": "final", "options": {"iterations": 80, "lr_lambdas": 1.0, "lr_sigmas": 1.0,
                                                         "eval_every": 80}})
    report, chosen = lam.guard, lam.guard["chosen"]
    assert report["split"] == {"fit": 5, "selection": 2, "guard": 41} and set(report["fd"]) == {"final", "timesteps", "greedy", "base"}
    assert chosen != "base" and report["minus_base"][chosen][1] < 0
    # The truth, on 2000 noises neither the fit nor the guard saw: what it took beats the base solver.
    fresh = noise(2000, seed=9)
    exact = dode.sample(mixture, fresh, dode.refine(sigmas, 5), "dpmpp_2m")
    grid = torch.tensor(lam.sigmas, dtype=torch.float64)
    taken = dode.sample(mixture, fresh, grid, "dpmpp_2m", lam)
    base = dode.sample(mixture, fresh, sigmas, "dpmpp_2m")
    flat = (lambda t: t.reshape(len(t), -1))
    assert frechet(flat(taken), flat(exact)) < frechet(flat(base), flat(exact))


def test_guard_features_and_timesteps_only_baseline(mixture):
    sigmas = dode.karras_sigmas(4, 0.002, 80.0)
    seen = []

    def features(x):
        seen.append(x.shape)
        return x.reshape(len(x), -1)[:, :8]

    lam = dode.distill(mixture, noise(40), sigmas, "euler", fit={"objective": "final", "options": {
        "learn_lambdas": False, "iterations": 10}}, features=features)
    assert seen and all(s[1:] == (1, 8, 8) for s in seen)
    # 20 guard samples: the 8 features are projected to 20 // 8 = 2 principal directions
    assert lam.guard["criterion"] == "fd" and lam.guard["features"] == 2
    if lam.guard["chosen"] == "final":
        assert lam.values == (0.0,) * 4


def test_objective_options_are_checked(mixture):
    sigmas = dode.karras_sigmas(4, 0.002, 80.0)
    assert set(OBJECTIVES) >= {"step", "final"}  # a superset: a new objective is tested unedited (test_objectives.py)
    with pytest.raises(ValueError, match="no option.*learn_sigmas"):
        dode.distill(mixture, noise(8), sigmas, "euler", fit={"options": {"learn_sigmas": True}})
    with pytest.raises(ValueError, match="objective: Input should be 'step' or 'final'"):
        dode.distill(mixture, noise(8), sigmas, "euler", fit={"objective": "global"})
    with pytest.raises(ValueError, match="learn_lambdas=true and/or learn_sigmas"):
        dode.distill(mixture, noise(8), sigmas, "euler", fit={"objective": "final", "options": {
            "learn_lambdas": False, "learn_sigmas": False}})
    with pytest.raises(ValueError, match="iterations: Input should be greater than or equal to 0"):
        dode.distill(mixture, noise(8), sigmas, "euler", fit={"objective": "final", "options": {"iterations": -1}})
    with pytest.raises(ValueError, match="optimizer: Input should be 'adam' or 'lbfgs'"):
        dode.distill(mixture, noise(8), sigmas, "euler", fit={"objective": "final", "options": {"optimizer": "sgd"}})


def test_guard_frechet_equals_pytorch_fids_distance():
    from dode.metrics.fid import StreamingMoments, frechet_distance

    gen = torch.Generator().manual_seed(3)
    a = torch.randn(300, 6, generator=gen, dtype=torch.float64)
    b = 0.5 * torch.randn(300, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen, dtype=torch.float64) + 1
    want = frechet_distance(*(StreamingMoments().add(x.numpy()).stats("t") for x in (a, b)))
    assert frechet(a, b) == pytest.approx(want, rel=1e-7)
    assert frechet(a, a) == pytest.approx(0.0, abs=1e-9)


def test_teacher_config_round_trips_and_bad_grids_are_refused():
    from dode.common.config import build
    from dode.core.grids import GridSpec
    from dode.distillation.teacher import TeacherConfig

    spec = TeacherConfig(solver="dpmpp_2m", factor=5)
    assert build(TeacherConfig, spec.model_dump()) == spec
    with pytest.raises(ValueError, match="TeacherConfig: steps: Extra inputs are not permitted"):
        build(TeacherConfig, {**spec.model_dump(), "steps": 3})
    for values, message in (([80.0, "x", 0.0], "must be numbers"), ("80,1,0", "needs a list of 3"),
                            ([80.0, 1.0], "needs a list of 3"), ([1.0, 80.0, 0.0], "strictly decreasing")):
        with pytest.raises(ValueError, match=message):
            GridSpec("explicit", 2, values=values)
    lam = dode.Lambdas([0.0, 0.1], "euler", [80.0, 1.0, 0.0], fit={"start_sigmas": "80,2,0"})
    with pytest.raises(ValueError, match="fit.start_sigmas"):
        implied_grid(lam, torch.tensor([80.0, 2.0, 0.0], dtype=torch.float64))


def test_a_model_trained_down_to_sigma_zero_gets_a_positive_sigma_floor():
    from dode.distillation.objectives.final import sigma_floor

    class FlowLike:
        sigma_min = 0.0

    sigmas = dode.karras_sigmas(4, 0.002, 80.0)
    assert sigma_floor(FlowLike(), sigmas) == pytest.approx(0.0002)


def test_a_later_iterate_replaces_the_selected_one_only_when_clearly_lower():
    import math

    from dode.distillation.objectives.final import SELECTION_TOL, clearly_lower

    assert clearly_lower(1.0, math.inf) and clearly_lower(0.98, 1.0)
    assert not clearly_lower(1 - SELECTION_TOL / 2, 1.0) and not clearly_lower(1.0, 1.0)
