"""Core speed ratios, measured in one run: D-ODE vs base sampling at equal NFE, distillation vs teacher.

    .venv/bin/python bench/speed.py [--model digits-ddpm] [--batch 64] [--repeats 15] [--distill-repeats 5]

Uses a real UNet (the embedded digits model, or a 1 M-parameter random UNet2DModel at 8x8 when the
embedded model is absent). Base and D-ODE sampling, and teacher and distillation, run interleaved
(A, B, A, B, ...); each ratio is taken within a round and printed as median (min to max) over the rounds.
Network calls count batched forward passes (one call evaluates the whole batch).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import dode
from dode.core.grids import GridSpec
from dode.distillation.teacher import TeacherConfig, teacher_states
from dode.models import EMBEDDED_MODEL_DIR, VPDenoiser, load_model


class Counting:
    def __init__(self, den):
        self.den, self.calls = den, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.den(x, sigma)


def random_unet_denoiser() -> VPDenoiser:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, layers_per_block=1)
    return VPDenoiser(unet.eval(), DDPMScheduler().alphas_cumprod)


def interleaved_times(fns, repeats: int) -> list[list[float]]:
    """Wall times of each function in each of ``repeats`` rounds, run A, B, A, B, ... so machine noise hits
    all alike; ratios are taken within a round."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return times


def best_times(fns, repeats: int) -> list[float]:
    """The minimum of each function's interleaved wall times (bench/gpu.py's sampling columns)."""
    return [min(ts) for ts in interleaved_times(fns, repeats)]


def spread(values: list[float], fmt: str) -> str:
    """Median (min-max) of ``values``, each formatted with ``fmt``."""
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)} to {format(max(values), fmt)})"


def ratios(num: list[float], den: list[float]) -> list[float]:
    return [a / b for a, b in zip(num, den)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits-ddpm" if EMBEDDED_MODEL_DIR.exists() else "random-unet")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds of base vs D-ODE sampling")
    parser.add_argument("--distill-repeats", type=int, default=5, help="interleaved rounds of teacher vs distill")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    den = random_unet_denoiser() if args.model == "random-unet" else load_model(args.model).denoiser
    shape = (1, 8, 8)
    noise = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
    torch.set_grad_enabled(False)

    print(f"model: {args.model}, batch {args.batch}, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} interleaved rounds of base / D-ODE sampling, {args.distill_repeats} of teacher / distill "
          "(guard off); median (min to max) of the per-round ratios\n")
    print("| solver | NFE | base s | D-ODE s | overhead % | distill calls / teacher calls, guard off / on "
          "| distill s / teacher s, guard off |")
    print("|---|---|---|---|---|---|---|")
    all_overheads, all_costs = [], []
    for solver in sorted(dode.SOLVERS):
        nfe = args.nfe if solver != "heun" else args.nfe - 1
        sigmas = GridSpec.for_nfe("karras", solver, nfe).sigmas(den)
        lam = dode.Lambdas([0.1] * nfe, solver, sigmas.tolist())
        base, corrected = interleaved_times(
            [lambda s=sigmas, v=solver: dode.sample(den, noise, s, v),
             lambda s=sigmas, v=solver, m=lam: dode.sample(den, noise, s, v, m)],
            args.repeats,
        )
        overhead = [100 * (r - 1) for r in ratios(corrected, base)]
        teacher = TeacherConfig.own(solver)  # the paper's: the student's own solver, 10x the steps
        plan = teacher.plan(sigmas, solver, den)
        teacher_s, distill_s = interleaved_times(
            [lambda p=plan: teacher_states(den, noise, p),
             lambda s=sigmas, v=solver, t=teacher: dode.distill(den, noise, s, v, t, {"guard": False})],
            args.distill_repeats,
        )
        cost = ratios(distill_s, teacher_s)
        teacher_calls, off_calls, on_calls = Counting(den), Counting(den), Counting(den)
        teacher_states(teacher_calls, noise, plan)
        dode.distill(off_calls, noise, sigmas, solver, teacher, {"guard": False})
        dode.distill(on_calls, noise, sigmas, solver, teacher)
        all_overheads += overhead
        all_costs += cost
        print(f"| {solver} | {nfe} | {statistics.median(base):.3f} | {statistics.median(corrected):.3f} | "
              f"{spread(overhead, '+.2f')} | {off_calls.calls / teacher_calls.calls:.3f} / "
              f"{on_calls.calls / teacher_calls.calls:.3f} | {spread(cost, '.3f')} |", flush=True)
    print(f"\nall solvers: D-ODE overhead {spread(all_overheads, '+.2f')} % over {len(all_overheads)} rounds; "
          f"distill s / teacher s {spread(all_costs, '.3f')} over {len(all_costs)} rounds")


if __name__ == "__main__":
    main()
