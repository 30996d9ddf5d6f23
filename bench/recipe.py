"""Recipe benchmark (issue 26): few network calls with the analytic first step, today's fit settings vs the recipe.

digits-ddpm, a solver (DPM-Solver++(2M) by default), the analytic first step, lambda + timesteps (``final``),
guarded in the model's guard features, teacher 2M on the 10x refined grid, 256 distillation noises (seeds 1,000,000 on). FD-digits of
the guard's choice (uint8, against the 1,797 bundled digits) on three disjoint 2,000-sample evaluation sets
(seeds 0-5,999 by seed mod 3: ``dode.metrics.spread``), printed as mean ± standard deviation, with the base
solver on the same grid. Settings:
  demo     the demo's variant: 40 iterations on 96 fit samples, holdout 0.5, Gaussian of 2,000 25-step samples
  recipe   start grid ending at 0.1, holdout 0.25, lambda from zero, 150 iterations, Gaussian of 4,000 50-step
           samples (issue 26's controlled experiment)
  recipe-caller-grid  the recipe from the caller's grid (Karras down to the model's sigma_min)
  demo-t   the demo's timesteps-only variant (learn_lambdas=False)

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipe.py --calls 2 3 4 --settings demo recipe
    OMP_NUM_THREADS=1 .venv/bin/python bench/recipe.py --calls 3 --settings demo recipe --fit-seed 2000000
    OMP_NUM_THREADS=1 .venv/bin/python bench/recipe.py --solver unipc --calls 5 --settings demo-t demo

Results: bench/results/recipe.json; bench/results/recipe-before-c6ff4de.json is this script (demo setting) run
on the tree of commit c6ff4de, before issue 26's parameterisation, selection and guard changes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dode
from dode.common.images import to_model, to_uint8
from dode.core.gaussian import FirstStep
from dode.core.grids import GridSpec
from dode.core.rng import seeded_noise
from dode.distillation.first_step import from_model
from dode.metrics.digits import fd_digits, load_digits_images
from dode.metrics.guard_features import guard_features
from dode.metrics.spread import SETS, spread, with_spread
from dode.models import load_model

TEACHER = "dpmpp_2m"  # the demo's teacher: DPM-Solver++(2M) on the 10x refined grid
SETTINGS = {
    "demo": {"gaussian": (2000, 25), "holdout": 0.5,
             "options": {"iterations": 40, "max_fit": 96, "micro_batch": 96}},
    "demo-t": {"gaussian": (2000, 25), "holdout": 0.5,
               "options": {"iterations": 40, "max_fit": 96, "micro_batch": 96, "learn_lambdas": False}},
    "recipe": {"gaussian": (4000, 50), "holdout": 0.25,
               "options": {"iterations": 150, "init": "zero", "start_sigma_min": 0.1, "micro_batch": 160}},
    "recipe-caller-grid": {"gaussian": (4000, 50), "holdout": 0.25,
                           "options": {"iterations": 150, "init": "zero", "micro_batch": 160}},
}


def fd_sets(x: torch.Tensor, seeds: range, data: torch.Tensor) -> dict:
    """FD-digits of the samples ``x`` (one per seed) on the SETS disjoint seed sets: mean, spread, values."""
    images = to_model(to_uint8(x))
    index = torch.tensor([s % SETS for s in seeds])
    return spread([fd_digits(images[index == k], data) for k in range(SETS)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solver", default="dpmpp_2m")
    parser.add_argument("--calls", nargs="+", type=int, default=[3])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--fit-seed", type=int, default=1_000_000, help="first seed of the 256 distillation noises")
    parser.add_argument("--n-eval", type=int, default=6000)
    parser.add_argument("--json", type=Path, default=Path("bench/results/recipe.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("digits-ddpm")
    den, data = model.denoiser, load_digits_images()[0]
    fit_noise = seeded_noise(range(args.fit_seed, args.fit_seed + 256), model.shape)
    seeds = range(args.n_eval)
    eval_noise = seeded_noise(seeds, model.shape)
    features = guard_features(model.guard_features)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    gaussians = {}
    for calls in args.calls:
        grid = GridSpec.for_calls("karras", args.solver, calls, "analytic").sigmas(den)
        for name in args.settings:
            setting = SETTINGS[name]
            if setting["gaussian"] not in gaussians:
                n, steps = setting["gaussian"]
                gaussians[setting["gaussian"]] = from_model(model, n, steps=steps)
            first = FirstStep("analytic", gaussians[setting["gaussian"]])
            t0 = time.perf_counter()
            lam = dode.distill(den, fit_noise, grid, args.solver, {"solver": TEACHER}, {
                "objective": "final", "holdout": setting["holdout"], "options": setting["options"]},
                features=features, first=first)
            seconds = time.perf_counter() - t0
            x = dode.sample(den, eval_noise, torch.tensor(lam.sigmas, dtype=torch.float64), args.solver, lam, first=first)
            base = dode.sample(den, eval_noise, grid, args.solver, first=first)
            cell = {"fd": fd_sets(x, seeds, data), "base": fd_sets(base, seeds, data), "seconds": round(seconds, 1),
                    "guard": lam.guard["chosen"], "guard_fd": lam.guard.get("fd"), "sigmas": list(lam.sigmas),
                    "values": list(lam.values)}
            results[f"{args.solver}/{calls}/{name}/{args.fit_seed}"] = cell
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
            print(f"{calls} calls {name} (fit seed {args.fit_seed}): "
                  f"{with_spread(cell['fd']['value'], cell['fd']['spread'])} "
                  f"(base {with_spread(cell['base']['value'], cell['base']['spread'])}); guard {cell['guard']}, "
                  f"{seconds:.0f} s, sigmas {[round(s, 4) for s in lam.sigmas]}", flush=True)


if __name__ == "__main__":
    main()
