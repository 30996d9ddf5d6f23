"""No orphans (issue 27): the ephemeral Prefect server of a `dode run` ends with it, also when the run is killed
with kill -9 (``dode_flows.server``'s watchdog). Processes are found through /proc (Linux)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc")


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def command(pid: int) -> str | None:
    """A live process's command line, None once it is gone (or a zombie)."""
    try:
        if (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def test_the_ephemeral_server_ends_when_dode_run_is_killed(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "DODE_REGISTRY": str(tmp_path / "registry")}
    env.pop("PREFECT_API_URL", None)
    code = "import sys; from dode.cli import main; sys.exit(main())"
    with open(tmp_path / "run.log", "wb") as log:  # a teacher of 600,000 samples x 2,000 steps: still running
        proc = subprocess.Popen([sys.executable, "-c", code, "run", "teacher", "--model", "mixture-smooth", "--steps",
                                 "2", "--teacher-factor", "1000", "--teacher-n-samples", "600000"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    started = []
    try:
        deadline = time.monotonic() + 240
        while not (started and (tmp_path / "registry").exists()):  # the server up and the flow running
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the flow never started"
            started = [p for p in children(proc.pid) if "uvicorn" in (command(p) or "")]
            time.sleep(0.2)
        helpers = children(proc.pid)
        proc.kill()
        proc.wait(timeout=20)
        deadline = time.monotonic() + 20
        while any(command(p) for p in helpers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [command(p) for p in helpers if command(p)] == []  # the server and its watchdog are gone
    finally:
        for pid in [proc.pid, *started]:
            if command(pid):
                os.kill(pid, signal.SIGKILL)
