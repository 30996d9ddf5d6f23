"""``make demo``: the end-to-end D-ODE sweep on the embedded 8x8 digits model, base vs D-ODE vs teacher.

Solvers euler, heun, dpmpp_2m, unipc at 2-10 network calls (the few-step cells per solver in prefect.yaml), base vs greedy D-ODE vs the final objective's variants -- the analytic first step among them
at 2-5 calls -- vs teacher, 2,000 samples per cell, scored by FD-digits and the RMSE to the teacher's
samples: the parameters of the digits-sweep deployment in prefect.yaml; then the same for the flow-matching
twin digits-flow, fewer cells (the digits-flow-sweep deployment). Every score is printed as the mean over
three disjoint evaluation sets of the cell's samples (by seed) ± their standard deviation
(``dode.metrics.spread``). The pipeline flow runs on Prefect's ephemeral server, its teachers, fits, sampling and scoring shards on a local Dask cluster (one single-threaded worker per
core). Prints the results table and the path of the report.

    python -m dode_flows.demo                 # both sweeps (timed in docs/benchmarks/00-demo.md)
    python -m dode_flows.demo --quick         # 2 solvers x 2 NFEs, one analytic first-step fit, 256 samples (tests)
    python -m dode_flows.demo --no-dask       # everything in this process
"""

from __future__ import annotations

import argparse
import os
import time

from dode.common.bounded import load_yaml
from dode.common.config import build
from dode.pipeline.runs import PipelineRun
from dode.pipeline.sweep import few_step_summary

from . import PREFECT_YAML
from .cli import run_stage, show

DEPLOYMENTS = ("digits-sweep", "digits-flow-sweep")  # the demo's parameters are these deployments': one source
QUICK = {"solvers": ["euler", "dpmpp_2m"], "nfes": [3, 5], "nfes_by_solver": {},
         "teacher": {"n_samples": 64, "batch_size": 128}, "sampling": {"n_samples": 256, "batch_size": 128},
         "variants": {"lam+timesteps": {"objective": "final", "options": {"iterations": 5}, "nfes": [5]},
                      "analytic λ+t": {"objective": "final", "first_step": "analytic", "options": {"iterations": 4},
                                       "solvers": ["dpmpp_2m"], "nfes": [3]}}}


def sweep_parameters(name: str) -> dict:
    """The parameters of a deployment in prefect.yaml."""
    spec = load_yaml(PREFECT_YAML)
    return dict(next(d for d in spec["deployments"] if d["name"] == name)["parameters"])


def quick(config: dict) -> dict:
    """A deployment's sweep configuration made small (``QUICK``; its parts' fields replaced one by one)."""
    return {**config, **{k: {**config.get(k, {}), **v} if k in ("teacher", "sampling") else v
                         for k, v in QUICK.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dode_flows.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small sweep (2 solvers x 2 NFEs, 256 samples)")
    parser.add_argument("--registry", default=None, help="registry path or URL (default $DODE_REGISTRY or ./dode-registry)")
    parser.add_argument("--dask", action=argparse.BooleanOptionalAction, default=None,
                        help="shards on a local Dask cluster (default: as the deployment, on)")
    args = parser.parse_args(argv)
    # Small convolutions on a shared 2-core machine: one thread per process is several times faster than two
    # (OpenMP wake-ups); the parallelism comes from the Dask workers.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    for name in DEPLOYMENTS[:1] if args.quick else DEPLOYMENTS:
        params = {**sweep_parameters(name), "registry": args.registry}
        config = build(PipelineRun, quick(params["config"]) if args.quick else params["config"])
        if args.dask is not None:
            params["dask"] = args.dask
        start = time.perf_counter()
        result = run_stage("pipeline", {**params, "config": config})
        metrics = config.scoring.metrics
        print(f"\n== {name}: {config.model}\n{show(result)}")
        print("\n".join(few_step_summary(result["rows"], config.planned_variants, metrics[0])))
        print(f"{name}: {len(result['rows']) // len(metrics)} cells in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
