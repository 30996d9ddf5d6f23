"""Resumption: `dode run pipeline` killed mid-run, rerun with a fresh Prefect database, recomputes nothing it had
finished (the registry is content-addressed and every task looks its artifact up first) and gives the results of
an uninterrupted run."""

import os
import re
import signal
import subprocess
import sys
import time

from dode.store.registry import Registry

ARGS = ["--model", "mixture-smooth", "--solvers", "euler", "dpmpp_2m", "--nfe", "3", "4",
        "--teacher-factor", "4", "--teacher-n-samples", "64", "--sampling-n-samples", "600", "--sampling-batch-size", "30"]
CHUNKS_PER_JOB = 600 // 30
JOBS = 1 + 2 * 4  # the teacher's samples, then base and D-ODE for 2 solvers x 2 NFEs


def dode_run(registry, home, out):
    """`dode run pipeline ARGS` in its own process group, with its own (fresh) Prefect home."""
    env = {**os.environ, "PREFECT_HOME": str(home), "DODE_REGISTRY": str(registry)}
    env.pop("PREFECT_API_URL", None)
    code = "import sys; from dode.cli import main; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, "run", "pipeline", *ARGS], env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def chunks(reg):
    return {a.id for a in reg.list("samples") if "images.npy" in a.files}


def test_a_killed_pipeline_resumes_without_recomputing(prefect_harness, tmp_path):
    from dode_flows.pipeline import pipeline_flow

    reg = Registry(tmp_path / "registry")
    with open(tmp_path / "first.log", "wb") as out:
        proc = dode_run(reg.uri, tmp_path / "home-1", out)
        try:
            deadline = time.monotonic() + 240
            while len(chunks(reg)) < JOBS * CHUNKS_PER_JOB // 4:  # kill a quarter into the sampling
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the pipeline never reached its sampling phase"
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI process and its ephemeral Prefect server
            proc.wait(timeout=60)
    before = {a.id: a for a in Registry(reg.uri).list()}
    done_chunks = chunks(Registry(reg.uri))
    assert 0 < len(done_chunks) < JOBS * CHUNKS_PER_JOB, "killed too late to test anything"
    assert {a.kind for a in before.values()} >= {"model", "trajectory", "lambdas", "samples"}

    with open(tmp_path / "second.log", "wb") as out:
        second = dode_run(reg.uri, tmp_path / "home-2", out)
        assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    after = Registry(reg.uri)
    assert not after.verify()  # nothing half-written survived the kill
    assert {a.id: a.created for a in after.list() if a.id in before} == {i: a.created for i, a in before.items()}
    # Nothing finished was recomputed: teachers and lambdas were found, and exactly the missing chunks computed.
    assert "computing teacher" not in log and "distilled" not in log
    computed = sum(int(n) for n in re.findall(r"computed (\d+) chunk\(s\)", log))
    assert computed == JOBS * CHUNKS_PER_JOB - len(done_chunks)
    assert "report: " in log

    # The results are those of an uninterrupted run.
    clean = pipeline_flow(config={"model": "mixture-smooth", "solvers": ("euler", "dpmpp_2m"), "nfes": (3, 4),
                                  "teacher": {"factor": 4, "n_samples": 64},
                                  "sampling": {"n_samples": 600, "batch_size": 30}}, registry=str(tmp_path / "clean"))
    resumed = next(a for a in after.list("report"))
    assert after.read_json(resumed, "results.json")["rows"] == clean["rows"]
