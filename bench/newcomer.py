"""Measure the newcomer paths: add a solver, an objective and a flow stage to a copy of the checkout, as
docs/design.md's "Where a change goes" says, count the files touched, and run the tests that enumerate the registries
there.

    .venv/bin/python bench/newcomer.py

The copy (the checkout's tracked and unignored files, in a temporary folder) gets (a) a solver: a renamed
copy of Euler's update rule, one module in dode/solvers/ and one entry in ``SOLVERS``; (b) an objective:
the greedy ``step`` fit under a new name, one module in dode/objectives/ and one entry in ``OBJECTIVES``;
(c) a flow stage: its configuration and ``STAGES`` entry in dode/runs.py, its flow in flows/stages.py, its
deployment in prefect.yaml, then ``dode run newcomer`` runs it on Prefect's ephemeral server. No test is
edited: the tests parametrized over the registries (solvers, objectives, stages and deployments) must
select and pass the new names.
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

STAGE_CONFIG = '''

class NewcomerRun(Config):
    """A newcomer's stage (added by bench/newcomer.py): the model's artifact."""

    model: ModelName = Field(DEFAULT_MODEL, description="model name (e.g. digits-ddpm), a diffusers folder or hub id")
'''

STAGE_FLOW = '''

@flow(name="dode-newcomer", version=dode.__version__, task_runner=IN_PROCESS)
def newcomer_flow(config: NewcomerRun = NewcomerRun(), registry: str | None = None) -> str:
    """A newcomer's stage: the model's artifact id.

    Args:
        config: the newcomer stage (dode.pipeline.runs.NewcomerRun): the model
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
    """
    return tasks.register_model(registry_uri(registry), config.model)
'''

STAGE_DEPLOYMENT = """
  - name: newcomer
    description: A newcomer's stage (added by bench/newcomer.py).
    entrypoint: flows.stages:newcomer_flow
    tags: [dode, stage]
    parameters:
      config: {model: mixture-smooth}
    work_pool: *process
"""


def add_solver(copy: Path) -> None:
    (copy / "dode/solvers/newcomer_euler.py").write_text(SOLVER_MODULE)
    register(copy / "dode/solvers/__init__.py", "from .newcomer_euler import NewcomerEuler\n",
             '    "newcomer_euler": NewcomerEuler(),\n', "SOLVERS")


def add_objective(copy: Path) -> None:
    (copy / "dode/objectives/newcomer_step.py").write_text(OBJECTIVE_MODULE)
    register(copy / "dode/objectives/__init__.py", "from .newcomer_step import fit_newcomer_step\n",
             '    "newcomer_step": fit_newcomer_step,\n', "OBJECTIVES")


def add_stage(copy: Path) -> None:
    runs, stages, deployments = copy / "dode/runs.py", copy / "flows/stages.py", copy / "prefect.yaml"
    text = runs.read_text()
    at = text.index("\n\nSTAGES: dict")
    text = text[:at] + STAGE_CONFIG + text[at:]
    end = text.index("}", text.index("STAGES: dict"))
    runs.write_text(text[:end] + ', "newcomer": NewcomerRun' + text[end:])
    text = stages.read_text().replace("from dode.pipeline.runs import ", "from dode.pipeline.runs import NewcomerRun, ", 1)
    stages.write_text(text + STAGE_FLOW)
    deployments.write_text(deployments.read_text() + STAGE_DEPLOYMENT)


def run_stage(copy: Path) -> str:
    """``dode run newcomer`` in the copy, on a fresh registry: the artifact id it prints, or its error."""
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PREFECT_HOME": str(copy / ".prefect")}
    command = ["run", "--quiet", "newcomer", "--registry", str(copy / "registry")]
    proc = subprocess.run([sys.executable, "-c", f"from dode.cli import main; raise SystemExit(main({command!r}))"],
                          check=False, cwd=copy, capture_output=True, text=True, env=env)
    out = proc.stdout.strip().splitlines()
    return out[-1] if proc.returncode == 0 and out else f"failed: {proc.stderr.strip()[-300:]}"


# (name, the edit, the name the tests select with -k, tests that enumerate the registry it extends)
PATHS = [
    ("solver", add_solver, "newcomer_euler", ["tests/test_solvers.py", "tests/test_core.py"]),
    ("objective", add_objective, "newcomer_step", ["tests/test_objectives.py"]),
    ("flow stage", add_stage, "newcomer", ["tests/orchestration/test_deployments.py"]),
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
        for what, edit, name, tests in PATHS:
            before = digests(copy)
            edit(copy)
            after = digests(copy)
            touched = sorted(f for f in after if before.get(f) != after[f])
            passed, failed, summary = run_tests(copy, tests, name)
            ok = ok and failed == 0 and passed > 0
            print(f"{what}: {len(touched)} files ({', '.join(touched)}); tests selected by -k {name} in "
                  f"{', '.join(tests)}, unedited: {passed} passed, {failed} failed  [{summary}]")
        ran = run_stage(copy)
        ok = ok and not ran.startswith("failed")
        print(f"dode run newcomer (the new stage, on Prefect's ephemeral server): {ran}")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
