"""First-step benchmark: the network's first step vs the analytic one (closed-form D at sigma_max) vs the
Gaussian's flow map, at equal network calls, base solver and the ``final`` objective's fits.

Per solver x network calls: FD-digits (2,000 samples quantised to uint8, against the 1,797 real digits) of
  plain        the base solver on the Karras grid (clipped to the model's sigmas) where it makes CALLS calls
  plain t      timesteps only (``final``, learn_lambdas=False) on that grid
  analytic     the base solver on CALLS + 1 steps, its first evaluation answered by the Gaussian
  analytic λ+t λ + timesteps (``final``, init ``timesteps``), guarded, with that first step
  flowmap      the Gaussian's flow map from sigma_max to the next sigma, then CALLS network steps
  flowmap λ+t  the same fit with that first step
(each fit column is the guard's choice among the fit, its timesteps-only sub-fit, greedy D-ODE and the base)
and the teacher (the 10x refined grid, DPM-Solver++(2M), from the same noise), with each fit's seconds and the
guard's choice (the guard in the model's guard features, as the flows run it). The Gaussian is fitted to 2,000 of the model's own 25-step samples (dode.distillation.first_step.from_model).

    .venv/bin/python bench/first_step.py --solvers dpmpp_2m --calls 3 4 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from quality import testbed

import dode
from dode.common.images import to_model, to_uint8
from dode.core.gaussian import FirstStep
from dode.core.grids import GridSpec
from dode.distillation.first_step import from_model
from dode.metrics.fid import frechet_distance
from dode.metrics.guard_features import guard_features

COLUMNS = ("plain", "plain t", "analytic", "analytic λ+t", "flowmap", "flowmap λ+t", "teacher")


def fd(x, stats, data_stats) -> float:
    return frechet_distance(stats(to_model(to_uint8(x))), data_stats)


def run_cell(model, gauss, solver, calls, fit_noise, eval_noise, stats, data_stats, args):
    den = model.denoiser
    plain = GridSpec.for_calls("karras", solver, calls).sigmas(den)
    grids = {kind: GridSpec.for_calls("karras", solver, calls, kind).sigmas(den) for kind in ("analytic", "flowmap")}
    options = {"iterations": args.iterations, "max_fit": args.max_fit, "micro_batch": args.max_fit}
    features = guard_features(model.guard_features)  # the guard's features, as the flows pass them
    out, info = {}, {}

    def fitted(name, sigmas, first, **extra):
        t0 = time.perf_counter()
        lam = dode.distill(den, fit_noise, sigmas, solver, {"solver": "dpmpp_2m"},
                           {"objective": "final", "options": {**options, **extra}}, features=features, first=first)
        info[name] = {"seconds": round(time.perf_counter() - t0, 1), "guard": lam.guard.get("chosen"),
                      "sigmas": [round(s, 4) for s in lam.sigmas]}
        out[name] = dode.sample(den, eval_noise, torch.tensor(lam.sigmas, dtype=torch.float64), solver, lam)

    out["plain"] = dode.sample(den, eval_noise, plain, solver)
    fitted("plain t", plain, None, learn_lambdas=False)
    for kind in ("analytic", "flowmap"):
        first = FirstStep(kind, gauss)
        out[kind] = dode.sample(den, eval_noise, grids[kind], solver, first=first)
        fitted(f"{kind} λ+t", grids[kind], first)
    out["teacher"] = dode.sample(den, eval_noise, dode.refine(plain, 10), "dpmpp_2m")
    return {name: {"fd": round(fd(x, stats, data_stats), 2), **info.get(name, {})} for name, x in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "unipc", "euler"])
    parser.add_argument("--calls", nargs="+", type=int, default=[2, 3, 4, 5], help="network calls per sample")
    parser.add_argument("--n-fit", type=int, default=256, help="teacher/fit samples (the guard holds some out)")
    parser.add_argument("--n-eval", type=int, default=2000)
    parser.add_argument("--iterations", type=int, default=40, help="iterations of the final objective")
    parser.add_argument("--max-fit", type=int, default=96, help="fit samples the final objective uses")
    parser.add_argument("--json", type=Path, default=Path("bench/results/first_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, fit_noise, eval_noise, stats, data_stats = testbed("digits-ddpm", args.n_fit, args.n_eval)
    gauss = from_model(model)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    print("| solver | calls | " + " | ".join(COLUMNS) + " | fit s (guard's choice) |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 1))
    for solver in args.solvers:
        for calls in args.calls:
            cell = run_cell(model, gauss, solver, calls, fit_noise, eval_noise, stats, data_stats, args)
            results[f"digits-ddpm/{solver}/{calls}"] = cell
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
            fits = ", ".join(f"{k} {v['seconds']}s ({v['guard']})" for k, v in cell.items() if "seconds" in v)
            print(f"| {solver} | {calls} | " + " | ".join(f"{cell[c]['fd']:.1f}" for c in COLUMNS) + f" | {fits} |",
                  flush=True)


if __name__ == "__main__":
    main()
