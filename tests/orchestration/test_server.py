"""Integration: a real `prefect server`, the deployments of prefect.yaml, a process work pool and worker.

The server (own PREFECT_HOME), the deploy, a triggered run of the smoke deployment with small parameters
and the registry passed as a job variable, one `prefect worker start --run-once`: the flow runs in a
subprocess of the worker and the registry receives its artifacts. Every process started is stopped by PID.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dode.store.registry import Registry

PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started in its own session, and its children, by process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture
def server(tmp_path):
    """A `prefect server start` on a free 127.0.0.1 port; yields the environment that points at it."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Prefect server did not come up in 180 s"
            time.sleep(0.5)
        yield env
    finally:
        stop(proc)


def prefect(env, *args, timeout=180, cwd=None):
    done = subprocess.run([*PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_deployed_pipeline_runs_on_a_process_worker(server, tmp_path, root):
    env = {**server, "DODE_WORKDIR": str(root)}
    registry = tmp_path / "registry"
    prefect(env, "work-pool", "create", "dode-process", "--type", "process")
    out = prefect(env, "--no-prompt", "deploy", "--all", cwd=root)
    for name in ("digits-sweep", "smoke", "nightly-reevaluation", "teacher", "distill", "sample", "score"):
        assert name in out
    job_env = {"DODE_REGISTRY": str(registry), "PREFECT_LOGGING_EXTRA_LOGGERS": "dode", "OMP_NUM_THREADS": "1"}
    config = {"model": "mixture-smooth", "solvers": ["euler"], "nfes": [3], "teacher": {"factor": 4, "n_samples": 16},
              "sampling": {"n_samples": 64, "batch_size": 32}}
    out = prefect(env, "deployment", "run", "dode-pipeline/smoke", "--param", f"config={json.dumps(config)}",
                  "--job-variable", f"env={json.dumps(job_env)}")
    run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)

    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([*PREFECT, "worker", "start", "--pool", "dode-process", "--run-once",
                                   "--install-policy", "never"], env=env, cwd=tmp_path, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            assert worker.wait(timeout=300) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        finally:
            stop(worker)
    state = json.loads(prefect(env, "flow-run", "inspect", run_id, "--output", "json"))["state"]
    assert state["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
    logs = prefect(env, "flow-run", "logs", run_id)
    assert "computing teacher mixture-smooth/karras-3" in logs, logs[-3000:]  # the library's dode.* loggers

    reg = Registry(registry)
    kinds = {a.kind for a in reg.list()}
    assert kinds == {"model", "trajectory", "lambdas", "samples", "reference-stats", "score", "report"}
    (report,) = reg.list("report")
    assert report.provenance["prefect_flow_run_id"] == run_id
    rows = reg.read_json(report, "results.json")["rows"]
    assert {(r["solver"], r["nfe"], r["metric"]) for r in rows} == {("euler", 3, "fd-pixels"), ("euler", 3, "rmse")}
    assert Path(reg.local_path(report, "report.md")).is_file()
