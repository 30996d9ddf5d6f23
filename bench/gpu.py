"""CUDA smoke and speed ratios on a GPU, in one run: the device check of docs/benchmarks/04-gpu.md.

    python bench/gpu.py [--batch 256] [--repeats 5] [--out DIR] [--device cuda]

Part 1, correctness on CUDA with the embedded digits-ddpm (real trained weights): D-ODE lambdas
distilled on CUDA and on the CPU from the same seeded noise agree, and so do the samples; the diffusers
``DODEPipeline`` on CUDA returns ``dode.sample``'s states. TF32 is off in this part (float32 parity).

Part 2, speed with a CIFAR-10-sized network: diffusers' UNet2DModel in the DDPM CIFAR-10 configuration
(35.7 M parameters, 3x32x32) with random weights (the machine reaches no model hub; speed does not
depend on the weights), float32 with PyTorch's default TF32 convolutions. Ratios at equal NFE: D-ODE vs
base sampling, sampling vs NFE bare forwards, distillation vs the teacher's own cost, the diffusers
pipeline vs ``dode.sample``, and streaming the teacher to Parquet vs the teacher alone; then pytorch-fid
InceptionV3 feature throughput (random weights in a temporary TORCH_HOME). Times are minima over
interleaved repeats, synchronised with the device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from sampling import sync
from speed import Counting, best_times

import dode
from dode.core.grids import GridSpec
from dode.core.rng import seeded_noise
from dode.distillation.teacher import TeacherConfig, teacher_states
from dode.distillation.teacher_parquet import write_teacher
from dode.integrations.diffusers.pipeline import DODEPipeline
from dode.integrations.diffusers.scheduler import DODEScheduler
from dode.models import EMBEDDED_MODEL_DIR, VPDenoiser, load_model

LINES: list[str] = []
DIGITS_SCHEDULE = json.loads((EMBEDDED_MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def synced(fn):
    def run():
        fn()
        sync()

    return run


def cifar_unet(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )
    return unet.to(device).eval()


def correctness(device: str, n: int) -> None:
    # Phase 1: the same seeded noise and grid distilled on the CPU and on CUDA.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    say("## Part 1: digits-ddpm on CUDA vs CPU (TF32 off)\n")
    say("| solver | NFE | max abs lambda diff | lambdas (CUDA) | sample max abs diff | sample RMS |")
    say("|---|---|---|---|---|---|")
    cpu, gpu = load_model("digits-ddpm").denoiser, load_model("digits-ddpm", device=device).denoiser
    for solver, nfe in (("euler", 6), ("dpmpp_2m", 5), ("ipndm", 4)):
        sigmas = GridSpec.for_nfe("karras", solver, nfe).sigmas(cpu)
        noise = seeded_noise(range(n), (1, 8, 8))
        lam_cpu = dode.distill(cpu, noise, sigmas, solver, fit={"guard": False})
        lam_gpu = dode.distill(gpu, noise.to(device), sigmas, solver, fit={"guard": False})
        x_cpu = dode.sample(cpu, noise, sigmas, solver, lam_cpu)
        x_gpu = dode.sample(gpu, noise.to(device), sigmas, solver, lam_gpu).cpu()
        dl = max(abs(a - b) for a, b in zip(lam_cpu.values, lam_gpu.values))
        dx = (x_cpu - x_gpu).abs()
        say(f"| {solver} | {nfe} | {dl:.2e} | {', '.join(f'{v:.3f}' for v in lam_gpu.values)} | "
            f"{dx.max():.2e} | {x_cpu.square().mean().sqrt():.3f} |")
    # Phase 2: the diffusers pipeline on CUDA against dode.sample on the same adapter.
    unet = gpu.model
    sched = DODEScheduler.from_scheduler(DIGITS_SCHEDULE, lambdas=lam_gpu)
    latents = seeded_noise(range(8), (1, 8, 8), device=device)
    pipe = DODEPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=8, latents=latents, output_type="latent").images
    ref = dode.sample(gpu, latents, sched.sigmas, lam_gpu.solver, lam_gpu)
    say(f"\nDODEPipeline on CUDA vs dode.sample (ipndm, NFE 4, 8 samples): max abs diff "
        f"{(out - ref).abs().max():.2e} (sample scale {ref.abs().max():.2f})\n")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True


def speed(device: str, batch: int, repeats: int, nfe: int) -> None:
    say(f"## Part 2: DDPM-CIFAR-10-sized UNet2DModel, batch {batch}, NFE {nfe}, TF32 convolutions\n")
    unet = cifar_unet(device)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    ddpm = DDPMScheduler()
    den = VPDenoiser(unet, ddpm.alphas_cumprod)
    noise = seeded_noise(range(batch), (3, 32, 32), device=device)
    t = torch.full((batch,), 500.0, device=device)
    torch.set_grad_enabled(False)
    forward = best_times([synced(lambda: unet(noise.float(), t))], repeats)[0]
    say(f"{params:.1f} M parameters; one bare forward at batch {batch}: {1e3 * forward:.1f} ms "
        f"({batch / forward:.0f} images/s per network call)\n")
    say("| solver | base s | D-ODE s | D-ODE overhead | base / (NFE x forward) | distill calls / teacher calls "
        "| distill s / teacher s | pipeline s / dode.sample s |")
    say("|---|---|---|---|---|---|---|---|")
    for solver in ("euler", "dpmpp_2m", "ipndm", "heun"):
        n = nfe - 1 if solver == "heun" else nfe
        sigmas = GridSpec.for_nfe("karras", solver, n).sigmas(den)
        lam = dode.Lambdas([0.1] * n, solver, sigmas.tolist())
        sched = DODEScheduler.from_scheduler(ddpm, lambdas=lam)
        pipe = DODEPipeline(unet=unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        base, corrected, piped = best_times([
            synced(partial(dode.sample, den, noise, sigmas, solver)),
            synced(partial(dode.sample, den, noise, sigmas, solver, lam)),
            synced(partial(pipe, batch_size=batch, latents=noise, output_type="latent")),
        ], repeats)
        teacher = TeacherConfig.own(solver)  # the paper's: the student's own solver, 10x the steps
        plan = teacher.plan(sigmas, solver, den)
        teacher_calls, distill_calls = Counting(den), Counting(den)
        t0 = time.perf_counter()
        teacher_states(teacher_calls, noise, plan)
        sync()
        teacher_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        dode.distill(distill_calls, noise, sigmas, solver, teacher, {"guard": False})
        sync()
        distill_s = time.perf_counter() - t0
        say(f"| {solver} | {base:.3f} | {corrected:.3f} | {100 * (corrected / base - 1):+.1f} % | "
            f"{base / (n * forward):.3f} | {distill_calls.calls / teacher_calls.calls:.3f} | "
            f"{distill_s / teacher_s:.3f} | {piped / corrected:.3f} |")


def teacher_to_parquet(device: str, batch: int) -> None:
    # Phase 3: the teacher flow's stage, seeded noise made batch by batch, streamed to Parquet.
    den = VPDenoiser(cifar_unet(device), DDPMScheduler().alphas_cumprod)
    sigmas = dode.refine(GridSpec.for_nfe("karras", "dpmpp_2m", 5).sigmas(den), 10)
    keep = set(range(10, 51, 10))
    seeds = range(4 * batch)
    with tempfile.TemporaryDirectory() as tmp:
        def stream():
            write_teacher(Path(tmp) / "t.parquet", den, partial(seeded_noise, shape=(3, 32, 32), device=device),
                          sigmas, "dpmpp_2m", keep=keep, sample_ids=seeds, batch_size=batch)

        def alone():
            for start in range(0, len(seeds), batch):
                dode.sample(den, seeded_noise(seeds[start:start + batch], (3, 32, 32), device=device), sigmas, "dpmpp_2m")
            sync()

        written, plain = best_times([stream, alone], 2)
        size = (Path(tmp) / "t.parquet").stat().st_size / 2**20
    say(f"\nTeacher to Parquet (DPM-Solver++(2M), 50 steps, {len(seeds)} samples, 5 stored steps, {size:.0f} MB): "
        f"{written:.2f} s streamed vs {plain:.2f} s for the teacher alone ({written / plain:.3f}x)\n")


def inception(device: str, n: int) -> None:
    # Phase 4: FID features on the GPU; random weights, written where pytorch-fid looks for its own.
    from dode.metrics.features import InceptionFeatures, write_random_inception_weights

    with tempfile.TemporaryDirectory() as home:
        os.environ["TORCH_HOME"] = home
        write_random_inception_weights(Path(home) / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")
        feats = InceptionFeatures(device=device)
        images = np.random.default_rng(0).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        x = torch.rand(n, 3, 299, 299, device=device)
        whole, bare = best_times([synced(lambda: feats(images)), synced(lambda: feats.model(x))], 3)
    say(f"InceptionV3 features, batch {n}: {n / whole:.0f} images/s end to end (uint8 -> 2048-d), bare forward "
        f"{n / bare:.0f} images/s ({bare / whole:.3f} of the limit); 50,000 images: {50_000 * whole / n:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--distill-samples", type=int, default=512)
    parser.add_argument("--inception-batch", type=int, default=500)
    parser.add_argument("--device", default="cuda", help="cuda (the check); cpu only to try the script out")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to DIR/gpu.md")
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA device; on the CPU run bench/speed.py and bench/sampling.py")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    say(f"# bench/gpu.py on {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")
    correctness(device, args.distill_samples)
    speed(device, args.batch, args.repeats, args.nfe)
    teacher_to_parquet(device, args.batch)
    inception(device, args.inception_batch)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.md").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
