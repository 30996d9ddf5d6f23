"""A solver or objective registered at run time is collected and exercised by the registry-wide contract tests
(docs/design.md's newcomer path: the tests need no edit; bench/newcomer.py measures the same with files). The solver is
bench/newcomer.py's own, with real properties: it may start at t = 1 and names its stock diffusers scheduler."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Registers bench/newcomer.py's solver module and a renamed step objective before pytest collects, then runs
# only their tests.
RUNNER = """
import importlib.util
import sys
import types

import pytest

import dode
from dode.distillation.objectives import OBJECTIVES
from dode.distillation.objectives.step import fit_step

spec = importlib.util.spec_from_file_location("newcomer_bench", "bench/newcomer.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
module = sys.modules["dode.core.solvers.dpmpp_2m_heun"] = types.ModuleType("dode.core.solvers.dpmpp_2m_heun")
exec(bench.SOLVER_MODULE, module.__dict__)
dode.SOLVERS["dpmpp_2m_heun"] = module.DPMSolverPPHeun()
OBJECTIVES["runtime_step"] = lambda problem: fit_step(problem)
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-k", sys.argv[1], *sys.argv[2:]]))
"""


def run(name: str, *files: str) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, name, *files], check=False, cwd=ROOT, capture_output=True,
                          text=True, env=env)
    summary = proc.stdout.strip().splitlines()[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)}
    assert proc.returncode == 0, proc.stdout[-3000:]
    return counts


def test_a_runtime_registered_solver_is_collected_and_passes_the_solver_contract():
    counts = run("dpmpp_2m_heun", "tests/test_solvers.py")
    assert counts.get("passed", 0) >= 5 and set(counts) == {"passed"}


def test_a_runtime_registered_solvers_properties_are_read_where_they_apply():
    # infinite_start: a flow-matching grid from t = 1 converges; stock: the diffusers export names its scheduler
    counts = run("dpmpp_2m_heun", "tests/test_flow_matching.py", "tests/test_solver_properties.py")
    assert counts.get("passed", 0) == 2 and set(counts) == {"passed"}


def test_a_runtime_registered_objective_is_collected_and_passes_the_objective_contract():
    counts = run("runtime_step", "tests/test_objectives.py")
    assert counts.get("passed", 0) >= 2 and set(counts) == {"passed"}
