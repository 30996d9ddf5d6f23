"""Fit cost of the ``final`` objective on the embedded digits model, one thread: seconds per fit (lambda + timesteps,
init ``timesteps``, guard on) at the demo budget and at the full budget, in float64 and float32, as multiples of
the teacher's generation time for the same distillation samples (DPM-Solver++(2M) on the 10x refined grid),
and what float32 costs in accuracy (held-out final MSE to the teacher, FD-digits of 2,000 samples).

Timings are interleaved (float64, float32, float64, float32, ...) and repeated; the table gives the median and
the spread (min-max) of --repeats runs.

    .venv/bin/python bench/fit_cost.py --cells dpmpp_2m:5:network dpmpp_2m:3:analytic --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from quality import testbed

import dode
from dode.common.images import to_model, to_uint8
from dode.core.gaussian import first_step
from dode.core.grids import GridSpec
from dode.distillation.first_step import from_model
from dode.metrics.fid import frechet_distance

BUDGETS = {"demo": {"iterations": 40, "max_fit": 96, "micro_batch": 96}, "full": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=["dpmpp_2m:5:network", "dpmpp_2m:3:analytic"],
                        help="solver:network calls:first step")
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-fit", type=int, default=256)
    parser.add_argument("--n-eval", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, fit_noise, eval_noise, stats, data_stats = testbed("digits-ddpm", args.n_fit, args.n_eval)
    den, gauss = model.denoiser, from_model(model)
    print("| cell | budget | dtype | fit s, median (min-max) | x teacher | held-out MSE | FD-digits |")
    print("|---|---|---|---|---|---|---|")
    for cell in args.cells:
        solver, calls, kind = cell.split(":")
        first = first_step(kind, gauss)
        sigmas = GridSpec.for_calls("karras", solver, int(calls), kind).sigmas(den)
        t0 = time.perf_counter()
        dode.sample(den, fit_noise, dode.refine(sigmas, 10), "dpmpp_2m")
        teacher_s = time.perf_counter() - t0
        for budget in args.budgets:
            seconds: dict[str, list[float]] = {"float64": [], "float32": []}
            fits = {}
            for _ in range(args.repeats):
                for dtype, runs in seconds.items():
                    t0 = time.perf_counter()
                    fits[dtype] = dode.distill(den, fit_noise, sigmas, solver, {"solver": "dpmpp_2m"}, {
                        "objective": "final", "options": {"dtype": dtype, **BUDGETS[budget]}}, first=first)
                    runs.append(time.perf_counter() - t0)
            for dtype, lam in fits.items():
                x = dode.sample(den, eval_noise, torch.tensor(lam.sigmas, dtype=torch.float64), solver, lam)
                fd = frechet_distance(stats(to_model(to_uint8(x))), data_stats)
                s = seconds[dtype]
                mse = lam.guard["mse"][lam.guard["chosen"]]
                print(f"| {solver} {calls} calls ({kind}) | {budget} | {dtype} | {statistics.median(s):.1f} "
                      f"({min(s):.1f}-{max(s):.1f}) | {statistics.median(s) / teacher_s:.1f} | {mse:.4g} | {fd:.1f} |",
                      flush=True)
        print(f"teacher for {len(fit_noise)} samples ({cell}): {teacher_s:.2f} s", flush=True)


if __name__ == "__main__":
    main()
