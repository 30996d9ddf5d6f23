"""Quality benchmark: base vs D-ODE (exact / official alignment, guard on / off) vs the Cx teacher, per solver x NFE.

Testbeds: the exact mixtures (metric FD-pixels: Frechet distance of raw pixels to 50,000 exact draws
from the data distribution) and the embedded digits-ddpm (metric FD-digits: Frechet distance of the
digits classifier's features to the 1,797 real digits). RMSE is to the ODE solution from the same
noise, approximated by a --ref-steps Heun solve (its error against twice the steps is printed): exact
up to that error on the mixtures, the network's own ODE on digits-ddpm. Results merge into --json
under "testbed/solver/nfe".

    .venv/bin/python bench/quality.py                       # both mixtures, every solver, NFE 3..10
    .venv/bin/python bench/quality.py --testbeds digits-ddpm --n-eval 1000 --ref-steps 100
    .venv/bin/python bench/quality.py --testbeds mixture-smooth --solvers euler --nfe 4 5
    .venv/bin/python bench/quality.py --plot-only          # redraw bench/results/quality-*.png from the JSON
    .venv/bin/python bench/quality.py --summary-only --testbeds mixture-smooth mixture-digits digits-ddpm
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dode
from dode.core.grids import GridSpec
from dode.distillation.teacher import TeacherConfig, teacher_states
from dode.metrics.digits import digits_features, load_digits_images
from dode.metrics.fid import StreamingMoments, frechet_distance
from dode.models import load_model

VARIANTS = ("base", "dode", "dode-noguard", "dode-official", "teacher")


METRICS = {"digits-ddpm": "FD-digits"}  # every other testbed: FD-pixels against exact draws


def pixel_stats(x: torch.Tensor):
    return StreamingMoments().add(x.reshape(len(x), -1).numpy()).stats("pixels")


def digits_stats(x: torch.Tensor):
    return StreamingMoments().add(digits_features(x.clamp(-1, 1).float()).numpy()).stats("digits")


def scorer(name: str, model):
    """(features -> stats of a sample set, the data's stats) for a testbed's metric."""
    if METRICS.get(name) == "FD-digits":
        return digits_stats, digits_stats(load_digits_images()[0])
    return pixel_stats, pixel_stats(model.denoiser.sample_data(50_000, torch.Generator().manual_seed(1)))


def testbed(name: str, n_fit: int, n_eval: int):
    """(model, fit noise, evaluation noise, stats function, the data's stats): the seeded setup of a testbed."""
    model = load_model(name)
    gen = torch.Generator().manual_seed(0)
    fit_noise = torch.randn(n_fit, *model.shape, generator=gen, dtype=torch.float64)
    eval_noise = torch.randn(n_eval, *model.shape, generator=gen, dtype=torch.float64)
    return (model, fit_noise, eval_noise, *scorer(name, model))


def run_cell(model, solver, nfe, fit_noise, eval_noise, exact, stats, data_stats, factor):
    den = model.denoiser
    sigmas = GridSpec.for_nfe("karras", solver, nfe).sigmas(den)
    outs = {"base": dode.sample(den, eval_noise, sigmas, solver)}
    teacher = TeacherConfig.own(solver, factor=factor)  # the paper's: the student's own solver
    outs["dode"] = dode.sample(den, eval_noise, sigmas, solver, dode.distill(den, fit_noise, sigmas, solver, teacher))
    outs["dode-noguard"] = dode.sample(
        den, eval_noise, sigmas, solver, dode.distill(den, fit_noise, sigmas, solver, teacher, {"guard": False})
    )
    if "karras" in dode.get_solver(solver).official:  # the reference code's alignment exists for it
        lam = dode.distill(den, fit_noise, sigmas, solver, {"factor": factor, "alignment": "official"},
                           {"guard": False})
        outs["dode-official"] = dode.sample(den, eval_noise, sigmas, solver, lam)
    plan = teacher.plan(sigmas, solver, den)
    outs["teacher"] = teacher_states(den, eval_noise, plan, keep={len(plan.sigmas) - 1})[len(plan.sigmas) - 1]
    return {
        name: {
            "fd": frechet_distance(stats(x), data_stats),
            "rmse": float((x - exact).square().mean().sqrt()),
        }
        for name, x in outs.items()
    }


def plot(results: dict, out_dir: Path) -> None:
    """FD-pixels and RMSE vs NFE per testbed: base dashed, D-ODE (exact, guarded) solid, one colour per solver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    testbeds = sorted({key.split("/")[0] for key in results})
    for testbed in testbeds:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        cells = {tuple(k.split("/")[1:]): v for k, v in results.items() if k.startswith(testbed + "/")}
        for i, solver in enumerate(sorted({s for s, _ in cells})):
            nfes = sorted(int(n) for s, n in cells if s == solver)
            for ax, metric in zip(axes, ("fd", "rmse")):
                for variant, style in (("base", "--"), ("dode", "-")):
                    ys = [cells[(solver, str(n))][variant][metric] for n in nfes]
                    ax.plot(nfes, ys, style, color=f"C{i}", marker=".", label=solver if variant == "dode" else None)
        for ax, label in zip(axes, (METRICS.get(testbed, "FD-pixels"), "RMSE to the ODE solution")):
            ax.set(yscale="log", xlabel="NFE", ylabel=label, title=f"{testbed}: base (dashed) vs D-ODE (solid)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / f"quality-{testbed}.png", dpi=90)
        plt.close(fig)


def summary(results: dict, testbed: str) -> str:
    """The counts the text quotes, computed from the stored cells of ``testbed``: where D-ODE (exact, guarded)
    lowers RMSE and FD against the base, and `official` vs `exact` alignment like with like (both guard off)."""
    cells = [v for k, v in results.items() if k.startswith(testbed + "/")]
    official = [c for c in cells if "dode-official" in c]

    def lower(variant: str, than: str, metric: str, among: list) -> int:
        return sum(c[variant][metric] < c[than][metric] for c in among)

    return (f"{testbed}: {len(cells)} cells; D-ODE (guarded) lowers RMSE to the ODE solution in "
            f"{lower('dode', 'base', 'rmse', cells)} of {len(cells)}, FD in {lower('dode', 'base', 'fd', cells)}; "
            f"without the guard RMSE in {lower('dode-noguard', 'base', 'rmse', cells)}, FD in "
            f"{lower('dode-noguard', 'base', 'fd', cells)}. Official vs exact alignment, both guard off "
            f"({len(official)} Euler/Heun cells): official has the lower FD in "
            f"{lower('dode-official', 'dode-noguard', 'fd', official)}, the lower RMSE in "
            f"{lower('dode-official', 'dode-noguard', 'rmse', official)}; official above the base in FD in "
            f"{sum(c['dode-official']['fd'] > c['base']['fd'] for c in official)}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbeds", nargs="+", default=["mixture-smooth", "mixture-digits"])
    parser.add_argument("--solvers", nargs="+", default=sorted(dode.SOLVERS))
    parser.add_argument("--nfe", nargs="+", type=int, default=[3, 4, 5, 6, 8, 10])
    parser.add_argument("--n-fit", type=int, default=256)
    parser.add_argument("--n-eval", type=int, default=2000)
    parser.add_argument("--teacher-factor", type=int, default=10)
    parser.add_argument("--ref-steps", type=int, default=400, help="Heun steps of the reference ODE solve")
    parser.add_argument("--json", type=Path, default=Path("bench/results/quality.json"))
    parser.add_argument("--plot-only", action="store_true", help="only redraw the plots from --json")
    parser.add_argument("--summary-only", action="store_true", help="only print --testbeds' summaries from --json")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(args.json.read_text()), args.json.parent)
        return
    if args.summary_only:
        results = json.loads(args.json.read_text())
        print("\n".join(summary(results, name) for name in args.testbeds))
        return
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    for name in args.testbeds:
        model, fit_noise, eval_noise, stats, data_stats = testbed(name, args.n_fit, args.n_eval)
        # Reference: a fine Heun solve on the students' sigma range, checked against one twice as fine.
        exact, finer = (dode.sample(model.denoiser, eval_noise, GridSpec("karras", n).sigmas(model.denoiser), "heun")
                        for n in (args.ref_steps, 2 * args.ref_steps))
        ref_err = float((exact - finer).square().mean().sqrt())
        print(f"\n## {name}  (reference RMSE of the {args.ref_steps}-step Heun solve vs {2 * args.ref_steps} "
              f"steps: {ref_err:.2e}; FD is {METRICS.get(name, 'FD-pixels')})\n")
        print("| solver | NFE | " + " | ".join(f"{v} FD / RMSE" for v in VARIANTS) + " |")
        print("|---|---|" + "---|" * len(VARIANTS))
        for solver in args.solvers:
            for nfe in args.nfe:
                try:
                    GridSpec.for_nfe("karras", solver, nfe)
                except ValueError:
                    continue
                t0 = time.perf_counter()
                cell = run_cell(model, solver, nfe, fit_noise, eval_noise, exact, stats, data_stats,
                                args.teacher_factor)
                results[f"{name}/{solver}/{nfe}"] = cell
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1))  # after every cell: a crash keeps what ran
                cols = [f"{cell[v]['fd']:.3f} / {cell[v]['rmse']:.3f}" if v in cell else "–" for v in VARIANTS]
                print(f"| {solver} | {nfe} | " + " | ".join(cols) + f" |  <!-- {time.perf_counter() - t0:.1f}s -->",
                      flush=True)
        print("\n" + summary(results, name))
    plot(results, args.json.parent)


if __name__ == "__main__":
    main()
