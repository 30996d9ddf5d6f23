"""Orchestration overhead: the pipeline flow through Prefect vs the same sweep (dode.pipeline.sweep_run.run_pipeline) with
its steps as plain calls (``InProcess``): one copy of the order, two executors.

Both compute everything into fresh registries and must produce the same artifacts (same ids). The
Prefect side runs on the local ephemeral server, started (and warmed by a small run) before timing,
with the settings `dode run` uses there (``dode_flows.cli.local_settings``: no flow heartbeats).

    .venv/bin/python bench/orchestration.py                       # the embedded model, a small sweep
    .venv/bin/python bench/orchestration.py --model mixture-smooth --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="dode-bench-prefect-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dode_flows  # noqa: F401 - Prefect defaults before Prefect is imported
import psutil
import torch

from dode.common.config import build
from dode.pipeline.runs import PipelineRun
from dode.pipeline.sweep_run import InProcess, run_pipeline
from dode.store.registry import Registry


def artifact_ids(uri: str) -> set[str]:
    """Ids of the artifacts both sides must agree on (reports differ: their meta holds the registry path)."""
    return {a.id for a in Registry(uri).list() if a.kind != "report"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits-ddpm")
    parser.add_argument("--solvers", nargs="+", default=["euler", "dpmpp_2m"])
    parser.add_argument("--nfe", nargs="+", type=int, default=[4, 6])
    parser.add_argument("--n-samples", type=int, default=500)
    parser.add_argument("--n-distill", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=4,
                        help="interleaved rounds (the side that runs first alternates); the median ratio is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: as the demo's processes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dode_flows.cli import local_settings
    from dode_flows.pipeline import pipeline_flow

    metrics = ["fd-digits", "rmse"] if args.model == "digits-ddpm" else ["fd-pixels", "rmse"]
    cfg = build(PipelineRun, {
        "model": args.model, "solvers": args.solvers, "nfes": args.nfe,
        "teacher": {"n_samples": args.n_distill, "batch_size": args.batch_size},
        "sampling": {"n_samples": args.n_samples, "batch_size": args.batch_size}, "scoring": {"metrics": metrics}})

    # Warm-up: start the ephemeral server; import and load everything once (model, extractors, matplotlib).
    tiny = build(PipelineRun, {**cfg.model_dump(), "solvers": args.solvers[:1], "nfes": args.nfe[:1],
                               "teacher": {"n_samples": 16, "batch_size": 64},
                               "sampling": {"n_samples": 128, "batch_size": 64}})
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        run_pipeline(tiny, a, InProcess())
        pipeline_flow(tiny, registry=b)
    server = psutil.Process().children(recursive=True)  # the ephemeral server (uvicorn)
    server_cpu = []
    times: dict[str, list[float]] = {"plain loop": [], "Prefect flow": []}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            for side in ("plain loop", "Prefect flow")[:: 1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                if side == "plain loop":
                    run_pipeline(cfg, a, InProcess())
                else:
                    cpu = sum(sum(p.cpu_times()[:2]) for p in server)
                    with local_settings():
                        pipeline_flow(cfg, registry=b)
                    server_cpu.append(sum(sum(p.cpu_times()[:2]) for p in server) - cpu)
                times[side].append(time.perf_counter() - t0)
            if artifact_ids(a) != artifact_ids(b):
                raise SystemExit("the two sides produced different artifacts")
    overhead = [100 * (p / q - 1) for p, q in zip(times["Prefect flow"], times["plain loop"])]  # per round
    cells = len(cfg.cells)
    print(f"\n`{' '.join([Path(sys.executable).name, *sys.argv])}`  ({cells} cells x {args.n_samples} samples, "
          f"{args.model}, {args.threads} torch thread(s), {os.cpu_count()} CPUs, {args.repeats} interleaved rounds)\n")
    print("| run | median wall time (s) | all rounds (s) |\n|---|---:|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"| **Prefect overhead, per round** | **{statistics.median(overhead):+.1f} %** (min {min(overhead):+.1f} %, "
          f"max {max(overhead):+.1f} %) | {', '.join(f'{v:+.1f}' for v in overhead)} |")
    print(f"| (Prefect server CPU during the flow, s) | {statistics.median(server_cpu):.2f} | "
          f"{', '.join(f'{v:.2f}' for v in server_cpu)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
