"""Check in a real browser that the report is the first artifact card of a pipeline run's page in the Prefect UI.

    .venv/bin/python bench/ui_report_first.py      # needs Debian's chromium and npm (playwright-core, installed
                                                   # into ~/.cache/dode-bench on first use)

Starts a Prefect server on 127.0.0.1 (its own PREFECT_HOME), runs a small sweep of the pipeline flow against it,
opens the run's page in headless Chromium, clicks its Artifacts tab (bench/ui_report_first.js), prints the
artifact cards in the order the page shows them and saves a screenshot (bench/results/ui-report-first.png). Stops
the server it started.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = Path.home() / ".cache" / "dode-bench"
SWEEP = {"model": "mixture-smooth", "solvers": ("euler", "dpmpp_2m"), "nfes": (3,),
         "sampling": {"n_samples": 96, "batch_size": 48}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"no Prefect server at {url} after {seconds} s")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        env = {**os.environ, "PREFECT_HOME": f"{tmp}/prefect", "PREFECT_API_URL": api,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": api}
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                   str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            wait_for(f"{api}/health")
            code = ("import json, sys\nfrom dode_flows.pipeline import pipeline_flow\n"
                    f"state = pipeline_flow(config={SWEEP!r}, registry=sys.argv[1], return_state=True)\n"
                    "print(state.state_details.flow_run_id)\n")
            run = subprocess.run([sys.executable, "-c", code, f"{tmp}/registry"], env=env, cwd=ROOT, check=True,
                                 capture_output=True, text=True, timeout=900)
            run_id = run.stdout.strip().splitlines()[-1]
            page = f"http://127.0.0.1:{port}/runs/flow-run/{run_id}"
            shot = ROOT / "bench" / "results" / "ui-report-first.png"
            if not (NODE_MODULES / "node_modules" / "playwright-core").is_dir():
                NODE_MODULES.mkdir(parents=True, exist_ok=True)
                subprocess.run(["npm", "install", "--prefix", str(NODE_MODULES), "playwright-core@1"], check=True,
                               capture_output=True, timeout=300)
            shown = subprocess.run(["node", str(ROOT / "bench" / "ui_report_first.js"), page, str(shot)],
                                   env={**env, "NODE_PATH": str(NODE_MODULES / "node_modules")}, check=True,
                                   capture_output=True, text=True, timeout=180).stdout
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    cards = re.findall(r"dode-[a-z]+(?:-[a-z0-9]+)*", json.loads(shown))
    order = list(dict.fromkeys(cards))
    print(f"page: {page}")
    print("artifact cards in page order:", ", ".join(order) or "(none found)")
    print(f"screenshot: {shot.relative_to(ROOT)}")
    first = order[0] if order else None
    print("the report is the first card" if first == "dode-report" else f"the first card is {first}, not the report")
    return 0 if first == "dode-report" else 1


if __name__ == "__main__":
    raise SystemExit(main())
