"""Measure README's newcomer paths: add a solver and an objective to a copy of the checkout, as README's
"Where to add things" says, count the files touched, and run the tests that enumerate the registries there.

    .venv/bin/python bench/newcomer.py

The copy (the checkout's tracked and unignored files, in a temporary folder) gets (a) a solver: a renamed
copy of Euler's update rule, one module in dode/solvers/ and one entry in ``SOLVERS``; (b) an objective:
the greedy ``step`` fit under a new name, one module in dode/objectives/ and one entry in ``OBJECTIVES``.
No test is edited: the contract tests parametrized over the registries must select and pass the new names.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SOLVER_MODULE = '''"""A renamed copy of Euler's update rule, added by bench/newcomer.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..types import Evaluation, SolverState, Tensor
from .base import OneEvalPerStep, push


@dataclass(frozen=True)
class NewcomerEuler(OneEvalPerStep):
    """x_{i+1} = D_i + (sigma_{i+1} / sigma_i) (x_i - D_i)."""

    name: str = "newcomer_euler"
    order: int = 1

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        return push(state, ev, denoised + (sigmas[state.k + 1] / ev.sigma) * (ev.x - denoised))
'''

OBJECTIVE_MODULE = '''"""The greedy step fit under a new name, added by bench/newcomer.py."""

from __future__ import annotations

from .problem import FitProblem, FitResult
from .step import fit_step


def fit_newcomer_step(problem: FitProblem) -> FitResult:
    return fit_step(problem)
'''

# (name, new module, registry file, registry line's anchor, import line, registry line, tests that enumerate it)
PATHS = [
    ("solver", "dode/solvers/newcomer_euler.py", SOLVER_MODULE, "dode/solvers/__init__.py",
     "from .newcomer_euler import NewcomerEuler\n", '    "newcomer_euler": NewcomerEuler(),\n', "SOLVERS",
     "newcomer_euler", ["tests/test_solvers.py", "tests/test_core.py"]),
    ("objective", "dode/objectives/newcomer_step.py", OBJECTIVE_MODULE, "dode/objectives/__init__.py",
     "from .newcomer_step import fit_newcomer_step\n", '    "newcomer_step": fit_newcomer_step,\n', "OBJECTIVES",
     "newcomer_step", ["tests/test_objectives.py"]),
]


def checkout_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def register(registry: Path, import_line: str, entry: str, name: str) -> None:
    """One import beside the others and one entry at the end of the registry dict ``name``."""
    text = registry.read_text()
    last_import = text.rindex("\nfrom .") + 1
    after = text.index("\n", last_import) + 1
    text = text[:after] + import_line + text[after:]
    start = text.index(f"{name}: dict")
    end = text.index("\n}\n", start)
    registry.write_text(text[: end + 1] + entry + text[end + 1:])


def run_tests(copy: Path, files: list[str], name: str) -> tuple[int, int, str]:
    """(passed, failed, pytest's summary line) for the tests in ``files`` selected by ``-k name``."""
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", name, *files],
                          check=False, cwd=copy, capture_output=True, text=True, env=env)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    count = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error)", summary)}
    return count.get("passed", 0), count.get("failed", 0) + count.get("error", 0), summary


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dode-newcomer-") as tmp:
        copy = Path(tmp) / "checkout"
        for f in checkout_files():
            (copy / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, copy / f)
        ok = True
        for what, module, source, registry, import_line, entry, dict_name, name, tests in PATHS:
            before = digests(copy)
            (copy / module).write_text(source)
            register(copy / registry, import_line, entry, dict_name)
            after = digests(copy)
            touched = sorted(f for f in after if before.get(f) != after[f])
            passed, failed, summary = run_tests(copy, tests, name)
            ok = ok and failed == 0 and passed > 0
            print(f"{what}: {len(touched)} files ({', '.join(touched)}); tests selected by -k {name} in "
                  f"{', '.join(tests)}, unedited: {passed} passed, {failed} failed  [{summary}]")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
