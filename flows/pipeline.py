"""The end-to-end D-ODE sweep for one model: teachers -> lambdas -> samples -> scores -> report.

For every solver x NFE cell the student grid is ``GridSpec.for_nfe(family, solver, nfe)``. The teacher
of a student grid is the teacher solver on its ``factor``-fold refinement (exact alignment); it runs once
per (model, family, grid steps, teacher, seeds) and serves every solver with that many grid steps:
euler/ipndm/dpmpp_2m/deis/unipc at NFE n and heun at NFE 2n - 1 share it. The default teacher solver,
``dpmpp_2m`` (2nd order, one evaluation per step), is fixed independently of the students for that reason,
and recorded with each lambdas artifact. With official alignment each fit runs the reference code's own
Euler teacher and nothing is stored for it.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

import dode
from dode.pipeline.report import REPORT_FILE, downloads, ui_markdown
from dode.pipeline.runs import PipelineRun
from dode.pipeline.steps import check_reference, open_registry, registry_uri
from dode.pipeline.sweep import cell_fits
from dode.pipeline.sweep_run import run_pipeline

from . import tasks
from .runners import IN_PROCESS, TaskExecutor, run_on


@flow(name="dode-pipeline", version=dode.__version__, task_runner=IN_PROCESS)
def pipeline_flow(config: PipelineRun = PipelineRun(), registry: str | None = None, dask: bool = False,
                  dask_address: str | None = None) -> dict:
    """Sweep solvers x NFEs on a model: base vs D-ODE vs teacher, scored, reported.

    Returns {"report": local path of report.md (or the registry URL), "report_id", "registry", "rows"}.

    Args:
        config: the sweep (dode.pipeline.runs.PipelineRun): model, solvers x NFEs, teacher, fit, variants, sampling, scoring
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
        dask: run the tasks on a temporary local Dask cluster
        dask_address: run the tasks on an existing Dask cluster (scheduler address)
    """
    uri = registry_uri(registry)
    reg = open_registry(uri)
    reg.check_writable()
    check_reference(reg, config.scoring.reference)  # before the teacher, fits and sampling run, not at scoring
    out = run_on(sweep_flow, dask, dask_address, config, uri)
    report = reg.get(out["report_id"])
    path = str(reg.local_path(report, REPORT_FILE)) if reg.local else f"{uri}/artifacts/{report.id}"
    # The UI's copy of the report, the one artifact of this run itself (so the first a run's page shows): images
    # inlined (relative links do not render there), downloads as commands.
    images = {name: reg.read_bytes(report, name) for name in report.files if name.endswith(".png")}
    text = reg.read_bytes(report, REPORT_FILE).decode() + "\n" + downloads(reg, out["shared"])
    create_markdown_artifact(ui_markdown(text, images), key="dode-report", description=f"report {report.id} at {path}")
    get_run_logger().info("%d results in the table artifact 'dode-results'; report: %s", len(out["rows"]), path)
    return {"report": path, "report_id": report.id, "registry": uri, "rows": out["rows"]}


@flow(name="dode-sweep", version=dode.__version__)
def sweep_flow(config: PipelineRun, uri: str) -> dict:
    """The pipeline's work (``dode.pipeline.sweep_run.run_pipeline``) on the task runner ``pipeline_flow`` chose (its
    own, or Dask's in this subflow); its progress, results table and registry links as task artifacts."""
    ex = TaskExecutor(tasks.open_progress(f"D-ODE sweep of {config.model}"))
    out = run_pipeline(config, uri, ex)
    reg = open_registry(uri)
    shared = [out["report_id"], *out["parents"], *(i for i in out["used"] if reg.get(i).kind == "samples")]
    linked = [out["model_id"], *out["teachers"], *(lam for c in out["cells"] for lam in cell_fits(c).values()),
              *out["used"], out["report_id"]]
    tasks.publish_results(uri, linked, out["rows"], f"{config.model}: base vs D-ODE vs teacher")
    ex.progress(100.0)
    return {"report_id": out["report_id"], "rows": out["rows"], "shared": shared}
