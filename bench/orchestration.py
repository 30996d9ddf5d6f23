"""Orchestration overhead: the pipeline flow through Prefect vs the same steps (flows.steps) in a plain loop.

Both compute everything into fresh registries and must produce the same artifacts (same ids). The
Prefect side runs on the local ephemeral server, started (and warmed by a small run) before timing,
with the settings `dode run` uses there (``flows.cli.local_settings``: no flow heartbeats).

    .venv/bin/python bench/orchestration.py                       # the embedded model, a small sweep
    .venv/bin/python bench/orchestration.py --model mixture-smooth --repeats 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="dode-bench-prefect-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
import torch

import flows  # noqa: F401 - Prefect defaults before Prefect is imported
from dode.grids import GridSpec
from dode.metrics.scores import FEATURES
from dode.report import render_report
from dode.store.registry import Registry
from dode.sweep import plan_cells, result_rows, sampling_jobs, score_items, with_samples
from flows import steps


def plain_pipeline(cfg: dict, uri: str) -> None:
    """The pipeline flow's steps in its order, without Prefect: same artifacts, same rows, same report."""
    cells = plan_cells(cfg["solvers"], cfg["nfes"], None, cfg["family"])
    model_id = steps.register_model(uri, cfg["model"])
    teachers = {s: steps.teacher(uri, model_id, GridSpec(cfg["family"], s).to_dict(), cfg["teacher_factor"],
                                 cfg["teacher_solver"], cfg["n_distill"], cfg["distill_seed"], cfg["batch_size"])
                for s in sorted({c["grid"]["steps"] for c in cells})}
    cells = [{**c, "lambdas": steps.distill(uri, teachers[c["grid"]["steps"]], c["solver"], True, 0.25, "data")}
             for c in cells]
    n, batch = cfg["n_samples"], cfg["batch_size"]
    teacher = {"solver": cfg["teacher_solver"], "factor": cfg["teacher_factor"]}
    families, jobs = sampling_jobs(cfg["model"], cells, teacher, n, 0, batch)
    cells, teacher_ids = with_samples(cells, families, [steps.sample(uri, job) for job in jobs])
    refs = {m: steps.reference_stats(uri, model_id, m, n, 0) for m in cfg["metrics"] if m in FEATURES}
    items = score_items(cells, teacher_ids, refs, cfg["metrics"])
    scores = [steps.score(uri, s, m, r) for s, m, r in items]
    reg = steps.open_registry(uri)
    rows = result_rows(reg, cells, teacher_ids, items, scores, cfg["metrics"])
    render_report(reg, f"{cfg['model']}/sweep/{cfg['family']}", {"model": cfg["model"]}, rows, cells,
                  teacher_ids[families[0]], sorted({c["lambdas"] for c in cells} | set(scores)))


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
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side; the minimum is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: as the demo's processes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from flows.cli import local_settings
    from flows.pipeline import pipeline_flow

    metrics = ["fd-digits", "rmse"] if args.model == "digits-ddpm" else ["fd-pixels", "rmse"]
    cfg = {"model": args.model, "solvers": args.solvers, "nfes": args.nfe, "family": "karras", "teacher_factor": 10,
           "teacher_solver": "dpmpp_2m", "n_distill": args.n_distill, "distill_seed": 1_000_000,
           "n_samples": args.n_samples, "batch_size": args.batch_size, "metrics": metrics}

    # Warm-up: start the ephemeral server; import and load everything once (model, extractors, matplotlib).
    tiny = {**cfg, "solvers": cfg["solvers"][:1], "nfes": cfg["nfes"][:1], "n_samples": 128, "n_distill": 16,
            "batch_size": 64}
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        plain_pipeline(tiny, a)
        pipeline_flow(**tiny, registry=b)
    server = psutil.Process().children(recursive=True)  # the ephemeral server (uvicorn)
    server_cpu = []
    times: dict[str, list[float]] = {"plain loop": [], "Prefect flow": []}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            for side in ("plain loop", "Prefect flow")[:: 1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                if side == "plain loop":
                    plain_pipeline(cfg, a)
                else:
                    cpu = sum(sum(p.cpu_times()[:2]) for p in server)
                    with local_settings():
                        pipeline_flow(**cfg, registry=b)
                    server_cpu.append(sum(sum(p.cpu_times()[:2]) for p in server) - cpu)
                times[side].append(time.perf_counter() - t0)
            if artifact_ids(a) != artifact_ids(b):
                raise SystemExit("the two sides produced different artifacts")
    plain, prefect = min(times["plain loop"]), min(times["Prefect flow"])
    cells = len(plan_cells(cfg["solvers"], cfg["nfes"], None, "karras"))
    print(f"\n`{' '.join([Path(sys.executable).name, *sys.argv])}`  ({cells} cells x {args.n_samples} samples, "
          f"{args.model}, {args.threads} torch thread(s), {os.cpu_count()} CPUs, best of {args.repeats})\n")
    print("| run | wall time (s) | all runs (s) |\n|---|---:|---|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"| **Prefect overhead** | **{prefect - plain:+.2f} ({100 * (prefect / plain - 1):+.1f} %)** | |")
    print(f"| (Prefect server CPU during the flow) | {min(server_cpu):.2f} | "
          f"{', '.join(f'{v:.2f}' for v in server_cpu)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
