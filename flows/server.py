"""The ephemeral Prefect server of a `dode run` ends with it, however the run ends (kill -9 included).

Prefect starts its local server (``python -m uvicorn ...``) on first use and stops it at exit (``atexit``), which
a killed process never reaches: the server then runs on with parent 1. ``tie_ephemeral_server`` registers, as
the process's ephemeral server, Prefect's own class with one change: next to the server it starts a watchdog
process (``WATCHDOG``, a few lines of the standard library, in its own session) that waits for this process
to end, by its parent pid changing, then stops the server (SIGTERM, SIGKILL after ``GRACE_S``) and exits; it
exits as well once the server is gone (a normal exit stops it).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

GRACE_S = 10  # the server's time to shut down on SIGTERM before SIGKILL
WATCHDOG = """
import os, signal, sys, time
server, parent, grace = int(sys.argv[1]), os.getppid(), float(sys.argv[2])
def alive():
    try:
        with open(f"/proc/{server}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        if os.path.isdir("/proc/self"):
            return False
    try:
        os.kill(server, 0)
        return True
    except OSError:
        return False
while alive() and os.getppid() == parent:
    time.sleep(0.2)
if alive():
    os.kill(server, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        os.kill(server, signal.SIGKILL)
"""


def tie_ephemeral_server() -> None:
    """Make the ephemeral server this process may start one that a watchdog stops when this process ends (a
    no-op when one is already registered: started, or tied, before)."""
    from prefect.server.api.server import SubprocessASGIServer

    class TiedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            server = super()._run_uvicorn_command()
            self.watchdog = subprocess.Popen(
                [sys.executable, "-c", WATCHDOG, str(server.pid), str(GRACE_S)], start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return server

    TiedServer()  # Prefect's SubprocessASGIServer() returns the instance registered for port None: this one
