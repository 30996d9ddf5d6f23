"""Sampling and FID-feature throughput against their physical limits (the bare network forward).

    .venv/bin/python bench/sampling.py [--batch 64] [--nfe 10] [--chunks 4] [--repeats 3] [--fid-batch 16]

Sampling: the limit is batch / (NFE x one bare UNet forward at that batch); ``generate_batch`` (seeded
noise + the D-ODE sampling loop) and ``run_sampling`` (plus uint8 conversion and one registry artifact
per chunk, in a temporary registry) are compared to it (target >= 0.95). The model is the embedded
digits-ddpm when present, else a random UNet2DModel at 8x8. FID features: pytorch-fid's InceptionV3 at
2048 dims on random weights (written to a temporary TORCH_HOME), images/s of ``InceptionFeatures`` vs the
bare forward on the same batch. Times are minima over interleaved repeats; on a shared machine the
"network share" column (time inside the network's forward during that same run, timed by hooks) is
the load-independent measure of overhead.
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

from dode.core.grids import GridSpec
from dode.models import EMBEDDED_MODEL_DIR, MODELS, Model, VPDenoiser, load_model
from dode.pipeline.generate import SamplingJob, generate_batch, run_sampling


def random_unet_model(device: str) -> Model:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, layers_per_block=1)
    return Model("random-unet", VPDenoiser(unet.to(device).eval(), DDPMScheduler().alphas_cumprod), (1, 8, 8),
                 "random-unet-seed0")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class NetTimer:
    """Wall time spent inside a module's forward (hooks), to split a run into network and overhead."""

    def __init__(self) -> None:
        self.total, self.t0 = 0.0, 0.0

    def attach(self, module: torch.nn.Module) -> torch.nn.Module:
        module.register_forward_pre_hook(lambda *_: self.start())
        module.register_forward_hook(lambda *_: self.stop())
        return module

    def start(self) -> None:
        sync()
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        sync()
        self.total += time.perf_counter() - self.t0


def timed(fn, timer: NetTimer) -> tuple[float, float]:
    """(wall seconds, fraction of them inside the network) of one call."""
    timer.total = 0.0
    t0 = time.perf_counter()
    fn()
    sync()
    wall = time.perf_counter() - t0
    return wall, timer.total / wall


def bench_sampling(args: argparse.Namespace, device: str) -> list[tuple[str, float, float, float]]:
    name = "digits-ddpm" if EMBEDDED_MODEL_DIR.exists() and not args.random_unet else "random-unet"
    timer, load = NetTimer(), MODELS.get(name, random_unet_model)

    def timed_model(dev: str) -> Model:
        m = load(dev)
        timer.attach(m.denoiser.model)
        return m

    MODELS[name] = timed_model  # run_sampling loads the model by name: it gets the hooked one
    model = load_model(name, device=device)
    den: VPDenoiser = model.denoiser
    spec = GridSpec.for_nfe("karras", args.solver, args.nfe)
    sigmas = spec.sigmas(den)
    x = torch.randn(args.batch, *model.shape, device=device)
    t = torch.full((args.batch,), 500.0, device=device)
    job = SamplingJob(name, args.solver, spec.to_dict(), n_samples=args.batch * args.chunks, batch_size=args.batch)
    from dode.store.registry import Registry

    forward, loop, whole = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved, so that load changes hit all three alike
            forward.append(timed(lambda: den.model(x, t), timer)[0])
            loop.append(timed(lambda: generate_batch(den, sigmas, args.solver, None, range(args.batch), model.shape,
                                                     device), timer))
            fresh = Registry(Path(tmp) / f"r{r}")
            whole.append(timed(lambda reg=fresh: run_sampling(job, reg, device=device), timer))
    limit = args.batch / (args.nfe * min(forward))
    loop_s, loop_share = min(loop)
    whole_s, whole_share = min(whole)
    print(f"sampling model: {name} ({sum(p.numel() for p in den.model.parameters()) / 1e6:.2f} M params), "
          f"solver {args.solver}, NFE {args.nfe}, batch {args.batch}, {args.chunks} chunks per run_sampling")
    return [
        ("bare forward x NFE (limit)", limit, 1.0, 1.0),
        ("generate_batch (noise + sampling loop)", args.batch / loop_s, args.batch / loop_s / limit, loop_share),
        (f"run_sampling ({args.chunks} chunks, registry)", job.n_samples / whole_s, job.n_samples / whole_s / limit,
         whole_share),
    ]


def bench_features(args: argparse.Namespace, device: str) -> list[tuple[str, float, float]]:
    from dode.common.images import to_rgb, to_unit
    from dode.metrics.features import FID_WEIGHTS_FILE, get_extractor, write_random_inception_weights

    with tempfile.TemporaryDirectory() as home:
        os.environ["TORCH_HOME"] = home
        write_random_inception_weights(Path(home) / "hub" / "checkpoints" / FID_WEIGHTS_FILE)
        extractor = get_extractor("inception", dims=2048, device=device)
    images = np.random.default_rng(0).integers(0, 256, (args.fid_batch, 1, 8, 8), dtype=np.uint8)
    inp = to_rgb(to_unit(images)).to(device)
    timer = NetTimer()
    timer.attach(extractor.model)
    extractor.model(inp)  # warm-up
    bare, ours = [], []
    for _ in range(args.repeats):
        bare.append(timed(lambda: extractor.model(inp), timer)[0])
        ours.append(timed(lambda: extractor(images), timer))
    ours_s, share = min(ours)
    return [
        ("InceptionV3 bare forward (limit)", args.fid_batch / min(bare), 1.0, 1.0),
        ("InceptionFeatures (uint8 -> 2048-d float64)", args.fid_batch / ours_s, min(bare) / ours_s, share),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--solver", default="euler")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
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
    print("| what | samples/s | fraction of limit | network share of wall time |\n|---|---|---|---|")
    for what, rate, frac, share in rows:
        print(f"| {what} | {rate:.1f} | {frac:.3f} | {share:.4f} |")
    print(f"\n| FID features, batch {args.fid_batch}, dims 2048 | images/s | fraction of limit | network share |"
          "\n|---|---|---|---|")
    for what, rate, frac, share in fid_rows:
        print(f"| {what} | {rate:.2f} | {frac:.3f} | {share:.4f} |")

if __name__ == "__main__":
    main()
