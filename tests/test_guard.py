"""The held-out guard: disjoint fit / selection / guard splits, and a choice that holds against the guard's noise."""

import pytest
import torch

import dode
from dode.distillation import guard
from dode.distillation.config import FitConfig
from dode.distillation.fit import fit_guarded, split
from dode.distillation.guard import frechet, frechet_weighted, resample_weights, select
from dode.distillation.objectives import FitProblem, FitResult, final
from dode.models import digits_mixture

SOLVER = "dpmpp_2m"


@pytest.fixture(scope="module")
def mixture():
    return digits_mixture(0.3)


def noise(n, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def flat(x):
    return x.reshape(len(x), -1)


class RowRecorder:
    """A denoiser that records which noise rows reach its first evaluation (x = sigma_max n), by phase."""

    def __init__(self, den, noise, sigma_max):
        self.den, self.start, self.sigma_max = den, sigma_max * flat(noise), sigma_max
        self.phase, self.rows = "fit", {"fit": set(), "selection": set(), "guard": set()}

    def __call__(self, x, sigma):
        if float(sigma.detach().reshape(-1)[0]) == self.sigma_max:
            dist, rows = torch.cdist(flat(x.detach()), self.start).min(1)
            assert float(dist.max()) < 1e-3  # distinct rows lie hundreds apart
            self.rows[self.phase].update(rows.tolist())
        return self.den(x, sigma)

    def during(self, phase, fn):
        def wrapped(*args, **kwargs):
            before, self.phase = self.phase, phase
            try:
                return fn(*args, **kwargs)
            finally:
                self.phase = before

        return wrapped


def test_split_sizes_follow_the_stated_rule():
    final = {"objective": "final"}  # an objective that selects its iterations
    assert split(256, final) == (96, 32, 128)  # the demo's noises
    assert split(256) == (128, 0, 128)  # no selection split for an objective that does not select
    assert split(256, {**final, "guard": False}) == (256, 0, 0)
    assert split(3, final) == (1, 1, 1) and split(2) == (1, 0, 1)
    with pytest.raises(ValueError, match="at least 3 noise samples"):
        split(2, final)
    with pytest.raises(ValueError, match="FitConfig: selection: Input should be less than 1"):
        split(64, {**final, "selection": 1.5})


def test_fit_selection_and_guard_see_disjoint_noise(mixture, monkeypatch):
    # Every row that reaches the network is recorded with the phase that sent it: fitting, selecting
    # iterations (final_error) or guarding (held_out_samples). Overlapping splits fail here.
    sigmas, x = dode.karras_sigmas(4, 0.002, 80.0), noise(32)
    teacher = dode.sample(mixture, x, dode.refine(sigmas, 5), SOLVER)
    recorder = RowRecorder(mixture, x, float(sigmas[0]))
    monkeypatch.setattr(final, "final_error", recorder.during("selection", final.final_error))
    monkeypatch.setattr(guard, "held_out_samples", recorder.during("guard", guard.held_out_samples))
    lam = fit_guarded(recorder, x, sigmas, SOLVER, [teacher] * 4, {},
                      FitConfig(objective="final", options={"iterations": 3, "eval_every": 1}))
    n_fit, n_selection, n_guard = split(32, {"objective": "final"})
    assert lam.guard["split"] == {"fit": n_fit, "selection": n_selection, "guard": n_guard} and lam.n_fit == n_fit
    assert recorder.rows == {"fit": set(range(n_fit)), "selection": set(range(n_fit, n_fit + n_selection)),
                             "guard": set(range(n_fit + n_selection, 32))}
    assert lam.fit["selected_on"] == "selection"


def test_bootstrap_frechet_equals_the_distance_on_resampled_rows():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(40, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, 5, generator=gen, dtype=torch.float64)
    weights = resample_weights(40, 7)
    assert weights.sum(1).tolist() == [40.0] * 7
    for w, fd in zip(weights, frechet_weighted(a, b, weights)):
        rows = torch.arange(40).repeat_interleave(w.long())
        assert float(fd) == pytest.approx(frechet(a[rows], b[rows]), rel=1e-9)


@pytest.fixture(scope="module")
def guard_set(mixture):
    """64 guard noises, 3000 fresh ones, and the teacher's finals for both (dpmpp_2m on the 5x refined grid)."""
    sigmas = dode.karras_sigmas(4, 0.002, 80.0)
    held, fresh = noise(64, seed=1), noise(3000, seed=2)
    teacher = [dode.sample(mixture, x, dode.refine(sigmas, 5), SOLVER) for x in (held, fresh)]
    return held, fresh, *teacher


def guard_problem(mixture, guard_set, sigmas):
    held, _, teacher, _ = guard_set
    empty = held[:0]
    return FitProblem(mixture, empty, sigmas, SOLVER, "data", (empty,) * 4, held, teacher, empty, empty)


def fresh_fd(mixture, guard_set, values, sigmas):
    """A candidate's Frechet distance to the teacher on the 3000 fresh noises (its true quality)."""
    _, fresh, _, teacher = guard_set
    lam = dode.Lambdas(values, SOLVER, sigmas.tolist()) if any(values) else None
    return frechet(flat(dode.sample(mixture, fresh, sigmas, SOLVER, lam)), flat(teacher))


def test_a_planted_candidate_better_only_by_the_guards_noise_is_refused(mixture, guard_set):
    # Lambdas that looked better than the base on the 64 guard samples in 16 dimensions but are worse on 3000
    # fresh ones: the old rule (first candidate no further than the base) took them; the guard must not.
    sigmas = dode.karras_sigmas(4, 0.002, 80.0)
    planted = (0.0, 0.237, 0.448, -0.471)
    assert fresh_fd(mixture, guard_set, planted, sigmas) > 1.02 * fresh_fd(mixture, guard_set, (0.0,) * 4, sigmas)
    problem = guard_problem(mixture, guard_set, sigmas)
    torch.manual_seed(1)
    chosen, report = select(problem, FitResult(planted, sigmas, "planted", {}, (), "fd"))
    low, high = report["minus_base"]["planted"]
    assert chosen == "base" and report["changed"] and low < 0 < high
    assert report["features"] == 8  # 64 guard samples: at most 64 / 8 dimensions
    torch.manual_seed(2)  # the bootstrap does not draw from torch's global generator
    assert select(problem, FitResult(planted, sigmas, "planted", {}, (), "fd")) == (chosen, report)


def test_the_lowest_of_the_clearly_better_candidates_is_taken(mixture, guard_set):
    # Base: a uniform grid (rho = 1); the result: rho = 2, clearly better; its alternative rho = 7 better still.
    grids = {rho: dode.karras_sigmas(4, 0.002, 80.0, rho) for rho in (1.0, 2.0, 7.0)}
    zero = (0.0,) * 4
    result = FitResult(zero, grids[2.0], "rho2", {}, (("rho7", zero, grids[7.0]),), "fd")
    chosen, report = select(guard_problem(mixture, guard_set, grids[1.0]), result)
    assert chosen == "rho7" and report["changed"]
    assert all(report["minus_base"][k][1] < 0 for k in ("rho2", "rho7"))
    fresh = {rho: fresh_fd(mixture, guard_set, zero, grid) for rho, grid in grids.items()}
    assert fresh[7.0] < fresh[2.0] < fresh[1.0]


def test_mse_guard_takes_a_consistent_gain_and_refuses_a_single_sample_one():
    # The step objective's criterion, the paired bootstrap of per-sample squared errors. "one": the base's
    # errors with one sample's error removed (lower mean, supported by one sample); "all": 10 % lower on
    # every sample. Only the consistent gain is clear of the bootstrap's noise.
    errors = torch.rand(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    planted = {"base": errors, "one": torch.where(torch.arange(64) == 7, 0.0, errors), "all": 0.9 * errors}
    weights = resample_weights(64)
    measure = {k: float(e.mean()) for k, e in planted.items()}
    resampled = {k: weights @ e / 64 for k, e in planted.items()}
    assert measure["all"] < measure["one"] < measure["base"]
    chosen, interval = guard.decide({k: measure[k] for k in ("one", "base")}, {k: resampled[k] for k in ("one", "base")})
    assert chosen == "base" and interval["one"][0] < 0 <= interval["one"][1]
    chosen, interval = guard.decide(measure, resampled)
    assert chosen == "all" and interval["all"][1] < 0


def test_rounding_level_differences_do_not_decide():
    # "same": the base up to rounding; "a" / "b": clearly better and equal up to rounding ("a" a hair higher):
    # "b", listed later, is the simpler and stays chosen.
    errors = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    weights = resample_weights(64)
    planted = {"a": 0.5 * errors * (1 - 1e-14), "same": errors * (1 - 1e-14), "b": 0.5 * errors, "base": errors}
    measure = {k: float(e.mean()) for k, e in planted.items()}
    assert measure["a"] < measure["b"] and measure["same"] < measure["base"]
    chosen, interval = guard.decide(measure, {k: weights @ e / 64 for k, e in planted.items()})
    assert chosen == "b" and interval["same"][1] < 0
    without = {k: v for k, v in planted.items() if k in ("same", "base")}
    assert guard.decide({k: measure[k] for k in without}, {k: weights @ e / 64 for k, e in without.items()})[0] == "base"


def planted_features(c, n, seed):
    """Teacher features r and base features b from the same n noises (as samplers from one noise are), and
    a candidate r + c (b - r): c < 1 brings the base's error toward the teacher, c > 1 amplifies it."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    r = z + 0.2 * torch.randn(n, 6, generator=gen, dtype=torch.float64)
    b = 1.3 * z + 0.4
    return r, b, r + c * (b - r)


def test_a_candidate_twice_the_guards_noise_worse_is_refused_and_twice_better_is_taken():
    # The guard's noise: the spread of the base's Frechet distance over 128-row guard sets (the report's
    # "noise" estimates it by the bootstrap). The planted candidate's true distance (on 40,000 rows) lies
    # twice that noise above or below the base's; on eight independent guard sets the guard refuses the
    # worse one every time and takes the better one every time.
    n, weights = 128, resample_weights(128)
    spread = torch.tensor([frechet(*planted_features(1.0, n, s)[:2][::-1]) for s in range(100, 140)]).std()
    r, b, _ = planted_features(1.0, 40_000, 0)

    def true_gap(c):
        return frechet(r + c * (b - r), r) - frechet(b, r)

    for sign in (1, -1):
        lo, hi = (1.0, 2.0) if sign > 0 else (0.0, 1.0)
        for _ in range(50):  # bisection for the c whose true distance is the base's +- 2 noise
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (true_gap(mid) < 2 * sign * spread) == (sign > 0) else (lo, mid)
        for seed in range(8):
            ref, base, cand = planted_features(mid, n, seed)
            resampled = {k: frechet_weighted(x, ref, weights) for k, x in (("planted", cand), ("base", base))}
            measure = {k: frechet(x, ref) for k, x in (("planted", cand), ("base", base))}
            bootstrap_noise = float(resampled["base"].std())
            assert 0.5 * spread < bootstrap_noise < 2 * spread  # the report's noise estimates the true spread
            assert guard.decide(measure, resampled)[0] == ("base" if sign > 0 else "planted")
