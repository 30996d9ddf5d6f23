"""Peak memory of teacher generation as the sample count grows: it must stay flat with streaming.

Each size runs in a fresh process: a DPM-Solver++(2M) teacher on the 10-fold refinement of a 5-step
Karras grid (51 states, all kept) streams batch by batch into a Parquet trajectory from per-seed
noise made batch by batch (as the teacher flow does), and the process's peak RSS is read from the
kernel.

    .venv/bin/python bench/memory.py [--model mixture-smooth] [--sizes 1024 4096 16384 65536] [--batch 512]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys, dode
from functools import partial
from dode.models import load_model
from dode.core.rng import seeded_noise
from dode.distillation.teacher_parquet import write_teacher
n, batch, path, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
model = load_model(name)
sigmas = dode.refine(dode.karras_sigmas(5), 10)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
write_teacher(path, model.denoiser, partial(seeded_noise, shape=model.shape), sigmas, "dpmpp_2m",
              sample_ids=range(n), batch_size=batch)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base / 1024, peak / 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mixture-smooth")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 4096, 16384, 65536])
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    print("| samples | trajectory file MB | peak RSS MB | RSS growth during the run MB | seconds |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "teacher.parquet"
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(args.batch), str(path), args.model],
                                 check=True, capture_output=True, text=True).stdout.split()
            base, peak = float(out[-2]), float(out[-1])
            print(f"| {n} | {path.stat().st_size / 2**20:.1f} | {peak:.0f} | {peak - base:.0f} | "
                  f"{time.perf_counter() - t0:.1f} |", flush=True)


if __name__ == "__main__":
    main()
