"""Orchestration tests: one Prefect test server for the session (only tests that ask for it pay for it).

Prefect state of the session (results, cache records) lives in a temporary PREFECT_HOME; flow heartbeats
are off (each flow run otherwise waits ~1 s for its heartbeat thread).
"""

import os
import tempfile
from pathlib import Path

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="dode-prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# One torch thread here and in the processes the tests start: the flows' small analytic-model ops are
# latency-bound, and on a busy 2-core machine OpenMP wake-ups cost ms per op (a (30, 10) softmax: 6 ms on
# 2 threads vs 9 us on 1). Results do not depend on it (the Dask test compares with 1-thread workers).
os.environ["OMP_NUM_THREADS"] = "1"

import dode_flows  # noqa: F401 - sets the flows' logging defaults before Prefect is imported
import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180), temporary_settings(
        updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    ):
        yield


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
