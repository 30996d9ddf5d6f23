"""Guard features benchmark: does the held-out guard pick what FD-digits prefers, in pixels or in the guard's
own digits features (``dode.metrics.guard_features``)?

On the embedded digits model at the demo's settings (256 distillation noises seeded from 1,000,000, teacher
dpmpp_2m on the 10x refined Karras grid, the demo's 96 / 32 / 128 split), per solver x NFE and objective,
one fit, then the guard's choice among its candidates in each feature map, and every candidate's FD-digits
on 2,000 fresh samples (seeds 0..1999, quantised to uint8 as the pipeline scores them) against the 1,797
bundled digits. A guard agrees when it picks the candidate of lowest FD-digits; regret is the FD-digits of
its pick minus that lowest. The ``step`` objective's guard ranks by MSE (``mse``); its rows also show what
a Frechet guard would pick among the same candidates.

    .venv/bin/python bench/guard_features.py                       # dpmpp_2m unipc euler x NFE 3 4 5
    .venv/bin/python bench/guard_features.py --solvers euler --nfe 4
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

import dode
from dode.common.images import to_model, to_uint8
from dode.core.grids import GridSpec
from dode.core.rng import seeded_noise
from dode.core.sampling import prepare
from dode.distillation.config import FitConfig
from dode.distillation.fit import checked_targets, fit_split, split_problem
from dode.distillation.guard import candidates, select
from dode.distillation.teacher import TeacherConfig, teacher_states
from dode.metrics.digits import fd_digits, load_digits_images
from dode.metrics.guard_features import load_guard_features
from dode.models import load_model

OBJECTIVES = {"step": {}, "final": {"iterations": 40, "max_fit": 96, "micro_batch": 96}}
GUARDS = ("pixels", "digits-guard")


def fd_of(den, eval_noise, values, sigmas, solver, real, cache):
    """FD-digits of a candidate's samples from ``eval_noise``, quantised to uint8 (cached by parameters)."""
    key = (tuple(round(v, 12) for v in values), tuple(round(s, 12) for s in sigmas.tolist()))
    if key not in cache:
        lam = dode.Lambdas(values, solver, sigmas.tolist()) if any(values) else None
        x = dode.sample(den, eval_noise, sigmas, solver, lam)
        cache[key] = fd_digits(to_model(to_uint8(x)), real)
    return cache[key]


def run_cell(den, solver, nfe, noise, eval_noise, real, features):
    sigmas = GridSpec.for_nfe("karras", solver, nfe).sigmas(den)
    plan = TeacherConfig().plan(sigmas, solver, den)
    states = teacher_states(den, noise, plan)
    noise, sigmas, _, n_eval = prepare(noise, sigmas, solver, "data")  # split_problem takes validated arrays
    targets = checked_targets(noise, n_eval, [states[i] for i in plan.targets])
    cache, rows = {}, {}
    for objective, options in OBJECTIVES.items():
        fit = FitConfig(objective=objective, options=options)
        problem = split_problem(den, noise, sigmas, solver, targets, fit)
        result, _ = fit_split(problem, plan.record(), fit)
        fd = {name: fd_of(den, eval_noise, v, s, solver, real, cache) for name, v, s in candidates(problem, result)}
        judged = result if result.criterion == "fd" else replace(result, criterion="fd")
        picks = {name: select(problem, judged, features[name])[0] for name in GUARDS}
        if result.criterion != "fd":
            picks = {"mse": select(problem, result)[0], **picks}
        rows[objective] = {"fd_digits": fd, "best": min(fd, key=fd.get), "picks": picks}
    return rows


def table_row(solver, nfe, objective, row):
    fd, best = row["fd_digits"], min(row["fd_digits"].values())
    cands = ", ".join(f"{k} {v:.1f}" for k, v in fd.items())
    picks = [f"{p} ({'yes' if fd[p] == best else f'+{fd[p] - best:.1f}'})" for p in row["picks"].values()]
    picks = " | ".join(picks if "mse" in row["picks"] else ["— (ranks by fd)", *picks])
    return f"| {solver} | {nfe} | {objective} | {cands} | {row['best']} | {picks} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "unipc", "euler"])
    parser.add_argument("--nfe", nargs="+", type=int, default=[3, 4, 5])
    parser.add_argument("--n-eval", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=Path("bench/results/guard-features.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("digits-ddpm")
    noise = seeded_noise(range(1_000_000, 1_000_256), model.shape)
    eval_noise = seeded_noise(range(args.n_eval), model.shape)
    real = to_model(to_uint8(load_digits_images()[0]))
    features = {"pixels": None, "digits-guard": load_guard_features()}
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    print("| solver | NFE | objective | FD-digits of each candidate | lowest | guard (mse) / pixels / digits-guard "
          "(agrees, else regret) |\n|---|---|---|---|---|---|")
    for solver in args.solvers:
        for nfe in args.nfe:
            cell = run_cell(model.denoiser, solver, nfe, noise, eval_noise, real, features)
            results[f"{solver}/{nfe}"] = cell
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))  # after every cell: a crash keeps what ran
            for objective, row in cell.items():
                print(table_row(solver, nfe, objective, row), flush=True)
    for objective in OBJECTIVES:
        rows = [c[objective] for c in results.values() if objective in c]
        for guard in ("mse", *GUARDS):
            regrets = [r["fd_digits"][r["picks"][guard]] - min(r["fd_digits"].values()) for r in rows if guard in r["picks"]]
            if regrets:
                agree = sum(r == 0 for r in regrets)
                print(f"{objective} / {guard}: agrees {agree}/{len(regrets)}, total regret {sum(regrets):.1f}")


if __name__ == "__main__":
    main()
