"""Core speed ratios, measured in one run: D-ODE vs base sampling at equal NFE, distillation vs teacher.

    .venv/bin/python bench/speed.py [--model digits-ddpm] [--batch 64] [--repeats 5]

Uses a real UNet (the embedded digits model, or a 1 M-parameter random UNet2DModel at 8x8 when the
embedded model is absent). Times are the minimum over interleaved repeats; ratios are what to read.
"""

from __future__ import annotations

import argparse
import time

import torch

import dode
from dode.grids import GridSpec
from dode.models import EMBEDDED_MODEL_DIR, VPDenoiser, load_model
from dode.teacher import TeacherSpec, teacher_states


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


def best_times(fns, repeats: int) -> list[float]:
    """Minimum wall time of each function, the runs interleaved so machine noise hits all alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits-ddpm" if EMBEDDED_MODEL_DIR.exists() else "random-unet")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    den = random_unet_denoiser() if args.model == "random-unet" else load_model(args.model).denoiser
    shape = (1, 8, 8)
    noise = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
    torch.set_grad_enabled(False)

    print(f"model: {args.model}, batch {args.batch}, torch threads {torch.get_num_threads()}\n")
    print("| solver | NFE | base s | D-ODE s | overhead | distill calls / teacher calls | distill s / teacher s |")
    print("|---|---|---|---|---|---|---|")
    for solver in sorted(dode.SOLVERS):
        nfe = args.nfe if solver != "heun" else args.nfe - 1
        sigmas = GridSpec.for_nfe("karras", solver, nfe).sigmas(den)
        lam = dode.Lambdas([0.1] * nfe, solver, sigmas.tolist())
        base, corrected = best_times(
            [lambda s=sigmas, v=solver: dode.sample(den, noise, s, v),
             lambda s=sigmas, v=solver, m=lam: dode.sample(den, noise, s, v, m)],
            args.repeats,
        )
        plan = TeacherSpec(None, 10, "exact").plan(sigmas, solver, den)
        teacher_calls, distill_calls = Counting(den), Counting(den)
        t0 = time.perf_counter()
        teacher_states(teacher_calls, noise, plan)
        teacher_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        dode.distill(distill_calls, noise, sigmas, solver, guard=False)
        distill_s = time.perf_counter() - t0
        print(f"| {solver} | {nfe} | {base:.3f} | {corrected:.3f} | {100 * (corrected / base - 1):+.2f} % | "
              f"{distill_calls.calls / teacher_calls.calls:.3f} | {distill_s / teacher_s:.3f} |", flush=True)


if __name__ == "__main__":
    main()
