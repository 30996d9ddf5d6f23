"""Objectives benchmark: base vs greedy D-ODE vs the ``final`` objective (timesteps only, lambda only,
lambda + timesteps) vs the teacher, per solver x NFE, with each fit's time and network calls.

Per cell: FD to the data (FD-digits on digits-ddpm, samples quantised to uint8 as the pipeline scores them;
FD-pixels against exact draws on the mixtures), FD to the teacher's own samples (the model's ODE
distribution: solver error without model error), RMSE to the ODE solution (a --ref-steps Heun solve),
and for every fit its wall time (one thread) and forward sample-evaluations, as multiples of the teacher's on the same samples (backward passes not counted). Results
merge into --json under "testbed/solver/nfe"; a markdown table per testbed goes to stdout.

    .venv/bin/python bench/objectives.py                                  # both mixtures, NFE 3..10
    .venv/bin/python bench/objectives.py --testbeds digits-ddpm --solvers euler dpmpp_2m unipc --nfe 4 5 6
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from quality import METRICS, testbed

import dode
from dode.common.images import to_model, to_uint8
from dode.core.grids import GridSpec
from dode.metrics.fid import frechet_distance

FITS = {  # variant -> its fit (dode.distillation.config.FitConfig fields; the final objective's budget added from the options)
    "greedy": {},
    "timesteps": {"objective": "final", "options": {"learn_lambdas": False}},
    "lambdas": {"objective": "final", "options": {"learn_sigmas": False}},
    "lam+timesteps": {"objective": "final"},
}
VARIANTS = ("base", *FITS, "teacher")


class Counting:
    """A denoiser that counts the samples it evaluates (forward passes; a backward pass costs about 2 more)."""

    def __init__(self, den):
        self.den, self.calls = den, 0

    def __getattr__(self, name):  # the model's sigma range and schedule, as the wrapped denoiser has them
        return getattr(self.den, name)

    def __call__(self, x, sigma):
        self.calls += len(x)
        return self.den(x, sigma)


def timed_fit(den, fit_noise, sigmas, solver, factor, fit):
    counting, t0 = Counting(den), time.perf_counter()
    lam = dode.distill(counting, fit_noise, sigmas, solver, {"solver": "dpmpp_2m", "factor": factor}, fit)
    return lam, time.perf_counter() - t0, counting.calls


def run_cell(model, solver, nfe, fit_noise, eval_noise, exact, stats, data_stats, args):
    den = model.denoiser
    quantise = (lambda x: to_model(to_uint8(x))) if METRICS.get(model.name) == "FD-digits" else (lambda x: x)
    sigmas = GridSpec.for_nfe("karras", solver, nfe).sigmas(den)
    counting, t0 = Counting(den), time.perf_counter()
    teacher = dode.sample(counting, eval_noise, dode.refine(sigmas, args.teacher_factor), "dpmpp_2m")
    teacher_time = (time.perf_counter() - t0) * len(fit_noise) / len(eval_noise)  # per fit-set size
    teacher_calls = counting.calls
    outs, cost = {"base": dode.sample(den, eval_noise, sigmas, solver), "teacher": teacher}, {}
    final_opts = {"iterations": args.iterations, **({"max_fit": args.max_fit} if args.max_fit else {})}
    for name, options in FITS.items():
        final = options.get("objective") == "final"
        opts = {**options, "options": {**options.get("options", {}), **(final_opts if final else {})}}
        lam, seconds, calls = timed_fit(den, fit_noise, sigmas, solver, args.teacher_factor, opts)
        grid = torch.tensor(lam.sigmas, dtype=torch.float64)
        outs[name] = dode.sample(den, eval_noise, grid, solver, lam)
        cost[name] = {"seconds": round(seconds, 2), "time_x_teacher": round(seconds / teacher_time, 2),
                      "forward_evals_x_teacher": round(calls / teacher_calls * len(eval_noise) / len(fit_noise), 2),
                      "guard": lam.guard.get("chosen"), "sigmas": [round(s, 4) for s in lam.sigmas]}
    teacher_stats = stats(quantise(teacher))
    return {name: {"fd": frechet_distance(stats(quantise(x)), data_stats),
                   "fd_teacher": frechet_distance(stats(quantise(x)), teacher_stats),
                   "rmse": float((x - exact).square().mean().sqrt()), **cost.get(name, {})}
            for name, x in outs.items()}


def table_row(solver: str, nfe: int, cell: dict) -> str:
    cols = [f"{cell[v]['fd']:.3g} / {cell[v]['fd_teacher']:.3g} / {cell[v]['rmse']:.3f}" for v in VARIANTS]
    fits = ", ".join(f"{v} {cell[v]['seconds']}s ({cell[v]['time_x_teacher']}x)" for v in FITS)
    return f"| {solver} | {nfe} | " + " | ".join(cols) + f" | {fits} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbeds", nargs="+", default=["mixture-smooth", "mixture-digits"])
    parser.add_argument("--solvers", nargs="+", default=sorted(dode.SOLVERS))
    parser.add_argument("--nfe", nargs="+", type=int, default=[3, 4, 5, 6, 8, 10])
    parser.add_argument("--n-fit", type=int, default=256, help="teacher/fit samples (a quarter held out)")
    parser.add_argument("--n-eval", type=int, default=2000)
    parser.add_argument("--teacher-factor", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=100, help="iterations of the final objective")
    parser.add_argument("--max-fit", type=int, default=None, help="fit samples the final objective uses")
    parser.add_argument("--ref-steps", type=int, default=200, help="Heun steps of the reference ODE solve")
    parser.add_argument("--json", type=Path, default=Path("bench/results/objectives.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    for name in args.testbeds:
        model, fit_noise, eval_noise, stats, data_stats = testbed(name, args.n_fit, args.n_eval)
        exact = dode.sample(model.denoiser, eval_noise, GridSpec("karras", args.ref_steps).sigmas(model.denoiser), "heun")
        print(f"\n## {name} (cells: FD to data / FD to the teacher's samples / RMSE to the ODE solution; "
              f"FD is {METRICS.get(name, 'FD-pixels')})\n")
        print("| solver | NFE | " + " | ".join(VARIANTS) + " | fit time (x teacher) |")
        print("|---|---|" + "---|" * (len(VARIANTS) + 1))
        for solver in args.solvers:
            for nfe in args.nfe:
                try:
                    GridSpec.for_nfe("karras", solver, nfe)
                except ValueError:
                    continue
                cell = run_cell(model, solver, nfe, fit_noise, eval_noise, exact, stats, data_stats, args)
                results[f"{name}/{solver}/{nfe}"] = cell
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1))  # after every cell: a crash keeps what ran
                print(table_row(solver, nfe, cell), flush=True)


if __name__ == "__main__":
    main()
