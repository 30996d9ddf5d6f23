"""Quality benchmark on the exact testbeds: base vs D-ODE vs the Cx teacher, per solver x NFE.

Metrics: FD-pixels (Frechet distance of raw pixels to exact draws from the data distribution) and RMSE
to the exact ODE solution from the same noise (a 400-step Heun solve; its own error is printed).

    .venv/bin/python bench/quality.py                       # both mixtures, every solver, NFE 3..10
    .venv/bin/python bench/quality.py --testbeds mixture-smooth --solvers euler --nfe 4 5
    .venv/bin/python bench/quality.py --plot-only          # redraw bench/results/quality-*.png from the JSON
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dode
from dode.distill import teacher_plan, teacher_states
from dode.grids import GridSpec
from dode.metrics.fid import StreamingMoments, frechet_distance
from dode.models import load_model

VARIANTS = ("base", "dode", "dode-noguard", "dode-official", "teacher")


def pixel_stats(x: torch.Tensor):
    return StreamingMoments().add(x.reshape(len(x), -1).numpy()).stats("pixels")


def run_cell(model, solver, nfe, fit_noise, eval_noise, exact, data_stats, factor):
    sigmas = GridSpec.for_nfe("karras", solver, nfe).sigmas()
    den = model.denoiser
    outs = {"base": dode.sample(den, eval_noise, sigmas, solver)}
    outs["dode"] = dode.sample(den, eval_noise, sigmas, solver, dode.distill(den, fit_noise, sigmas, solver, factor))
    outs["dode-noguard"] = dode.sample(
        den, eval_noise, sigmas, solver, dode.distill(den, fit_noise, sigmas, solver, factor, guard=False)
    )
    if solver in ("euler", "heun"):
        lam = dode.distill(den, fit_noise, sigmas, solver, factor, alignment="official", guard=False)
        outs["dode-official"] = dode.sample(den, eval_noise, sigmas, solver, lam)
    plan = teacher_plan(den, sigmas, solver, factor, "exact", None)
    outs["teacher"] = teacher_states(den, eval_noise, plan, keep={len(plan.sigmas) - 1})[len(plan.sigmas) - 1]
    return {
        name: {
            "fd": frechet_distance(pixel_stats(x), data_stats),
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
        for ax, label in zip(axes, ("FD-pixels", "RMSE to the exact solution")):
            ax.set(yscale="log", xlabel="NFE", ylabel=label, title=f"{testbed}: base (dashed) vs D-ODE (solid)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / f"quality-{testbed}.png", dpi=90)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbeds", nargs="+", default=["mixture-smooth", "mixture-digits"])
    parser.add_argument("--solvers", nargs="+", default=sorted(dode.SOLVERS))
    parser.add_argument("--nfe", nargs="+", type=int, default=[3, 4, 5, 6, 8, 10])
    parser.add_argument("--n-fit", type=int, default=256)
    parser.add_argument("--n-eval", type=int, default=2000)
    parser.add_argument("--teacher-factor", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path("bench/results/quality.json"))
    parser.add_argument("--plot-only", action="store_true", help="only redraw the plots from --json")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(args.json.read_text()), args.json.parent)
        return
    results = {}
    for name in args.testbeds:
        model = load_model(name)
        gen = torch.Generator().manual_seed(0)
        fit_noise = torch.randn(args.n_fit, *model.shape, generator=gen, dtype=torch.float64)
        eval_noise = torch.randn(args.n_eval, *model.shape, generator=gen, dtype=torch.float64)
        data_stats = pixel_stats(model.denoiser.sample_data(50_000, torch.Generator().manual_seed(1)))
        # Reference: a fine Heun solve, checked against a finer one.
        exact = dode.sample(model.denoiser, eval_noise, dode.karras_sigmas(400), "heun")
        finer = dode.sample(model.denoiser, eval_noise, dode.karras_sigmas(800), "heun")
        ref_err = float((exact - finer).square().mean().sqrt())
        print(f"\n## {name}  (reference RMSE of the 400-step Heun solve vs 800 steps: {ref_err:.2e})\n")
        print("| solver | NFE | " + " | ".join(f"{v} FD / RMSE" for v in VARIANTS) + " |")
        print("|---|---|" + "---|" * len(VARIANTS))
        for solver in args.solvers:
            for nfe in args.nfe:
                try:
                    GridSpec.for_nfe("karras", solver, nfe)
                except ValueError:
                    continue
                t0 = time.perf_counter()
                cell = run_cell(model, solver, nfe, fit_noise, eval_noise, exact, data_stats, args.teacher_factor)
                results[f"{name}/{solver}/{nfe}"] = cell
                cols = [f"{cell[v]['fd']:.3f} / {cell[v]['rmse']:.3f}" if v in cell else "–" for v in VARIANTS]
                print(f"| {solver} | {nfe} | " + " | ".join(cols) + f" |  <!-- {time.perf_counter() - t0:.1f}s -->",
                      flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    plot(results, args.json.parent)


if __name__ == "__main__":
    main()
