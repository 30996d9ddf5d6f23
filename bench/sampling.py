"""Sampling and FID-feature throughput against their physical limits (the bare network forward).

    .venv/bin/python bench/sampling.py [--batch 64] [--nfe 10] [--chunks 8] [--repeats 5] [--fid-batch 16]

Sampling: the limit is batch / (NFE x one bare UNet forward at that batch); ``generate_batch`` (seeded
noise + the D-ODE sampling loop) and ``run_sampling`` (plus uint8 conversion and one registry artifact
per chunk, in a temporary registry) are compared to it (target >= 0.95). The model is the embedded
digits-ddpm when present, else a random UNet2DModel at 8x8. FID features: pytorch-fid's InceptionV3 at
2048 dims on random weights (written to a temporary TORCH_HOME), images/s of ``InceptionFeatures`` vs the
bare forward on the same batch. Times are minima over repeats.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dode.generate import SamplingJob, generate_batch, run_sampling
from dode.grids import GridSpec
from dode.models import EMBEDDED_MODEL_DIR, MODELS, Model, VPDenoiser, load_model


def random_unet_model(device: str) -> Model:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, layers_per_block=1)
    return Model("random-unet", VPDenoiser(unet.to(device).eval(), DDPMScheduler().alphas_cumprod), (1, 8, 8),
                 "random-unet-seed0")


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_sampling(args: argparse.Namespace, device: str) -> list[tuple[str, float, float]]:
    MODELS.setdefault("random-unet", random_unet_model)
    name = "digits-ddpm" if EMBEDDED_MODEL_DIR.exists() and not args.random_unet else "random-unet"
    model = load_model(name, device=device)
    den: VPDenoiser = model.denoiser
    spec = GridSpec.for_nfe("karras", args.solver, args.nfe)
    sigmas = spec.sigmas(den)
    x = torch.randn(args.batch, *model.shape, device=device)
    t = torch.full((args.batch,), 500.0, device=device)
    with torch.no_grad():
        forward = best(lambda: den.model(x, t), args.repeats)
    limit = args.batch / (args.nfe * forward)
    loop = best(lambda: generate_batch(den, sigmas, args.solver, None, range(args.batch), model.shape, device),
                args.repeats)
    job = SamplingJob(name, args.solver, spec.to_dict(), n_samples=args.batch * args.chunks, batch_size=args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        from dode.store.registry import Registry

        runs = iter(range(args.repeats))
        whole = best(lambda: run_sampling(job, Registry(Path(tmp) / f"r{next(runs)}"), device=device), args.repeats)
    print(f"sampling model: {name} ({sum(p.numel() for p in den.model.parameters()) / 1e6:.2f} M params), "
          f"solver {args.solver}, NFE {args.nfe}, batch {args.batch}, {args.chunks} chunks per run_sampling")
    return [
        ("bare forward x NFE (limit)", limit, 1.0),
        ("generate_batch (noise + sampling loop)", args.batch / loop, args.batch / loop / limit),
        (f"run_sampling ({args.chunks} chunks, registry)", job.n_samples / whole, job.n_samples / whole / limit),
    ]


def bench_features(args: argparse.Namespace, device: str) -> list[tuple[str, float, float]]:
    from dode.metrics.features import FID_WEIGHTS_FILE, get_extractor, write_random_inception_weights
    from dode.images import to_rgb, to_unit

    with tempfile.TemporaryDirectory() as home:
        os.environ["TORCH_HOME"] = home
        write_random_inception_weights(Path(home) / "hub" / "checkpoints" / FID_WEIGHTS_FILE)
        extractor = get_extractor("inception", dims=2048, device=device)
    images = np.random.default_rng(0).integers(0, 256, (args.fid_batch, 1, 8, 8), dtype=np.uint8)
    inp = to_rgb(to_unit(images)).to(device)
    with torch.no_grad():
        extractor.model(inp)  # warm-up
        bare = best(lambda: extractor.model(inp), args.repeats)
    ours = best(lambda: extractor(images), args.repeats)
    return [
        ("InceptionV3 bare forward (limit)", args.fid_batch / bare, 1.0),
        ("InceptionFeatures (uint8 -> 2048-d float64)", args.fid_batch / ours, bare / ours),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--solver", default="euler")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fid-batch", type=int, default=16)
    parser.add_argument("--random-unet", action="store_true", help="use the random UNet even if digits-ddpm exists")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_grad_enabled(False)
    rows = bench_sampling(args, device)
    fid_rows = bench_features(args, device)
    print(f"\ncommand: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"device: {device}, torch threads {torch.get_num_threads()}\n")
    print("| what | samples/s | fraction of limit |\n|---|---|---|")
    for what, rate, frac in rows:
        print(f"| {what} | {rate:.1f} | {frac:.3f} |")
    print(f"\n| FID features, batch {args.fid_batch}, dims 2048 | images/s | fraction of limit |\n|---|---|---|")
    for what, rate, frac in fid_rows:
        print(f"| {what} | {rate:.2f} | {frac:.3f} |")


if __name__ == "__main__":
    main()
