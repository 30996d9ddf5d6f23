"""A solver or objective registered at run time is collected and exercised by the registry-wide contract tests
(docs/design.md's newcomer path: the tests need no edit; bench/newcomer.py measures the same with files)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Registers a renamed Euler and a renamed step objective before pytest collects, then runs only their tests.
RUNNER = """
import sys
from dataclasses import dataclass

import pytest

import dode
from dode.distillation.objectives import OBJECTIVES
from dode.distillation.objectives.step import fit_step
from dode.core.solvers.explicit import Euler


@dataclass(frozen=True)
class Renamed(Euler):
    name: str = "runtime_euler"


dode.SOLVERS["runtime_euler"] = Renamed()
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
    counts = run("runtime_euler", "tests/test_solvers.py")
    assert counts.get("passed", 0) >= 5 and set(counts) == {"passed"}


def test_a_runtime_registered_objective_is_collected_and_passes_the_objective_contract():
    counts = run("runtime_step", "tests/test_objectives.py")
    assert counts.get("passed", 0) >= 2 and set(counts) == {"passed"}
