"""Measure the newcomer paths: add a solver with real properties, an objective and a flow stage that does real work
to a copy of the checkout, count the files touched, and run the tests that enumerate the registries there.

    .venv/bin/python bench/newcomer.py        # prints the result kept in bench/results/newcomer.md

The copy (the checkout's tracked and unignored files, in a temporary folder) gets (a) a solver: DPM-Solver++(2M)
with diffusers' heun-type second-order term, one module in dode/core/solvers/ and one entry in ``SOLVERS``; its
properties are attributes of its class (``dode.core.solvers.base.Solver``): it may start a flow-matching grid at
t = 1 (``infinite_start``) and its stock diffusers equivalent is DPMSolverMultistepScheduler with
solver_type="heun" (``stock``), which the export reads and which must reproduce it at lambda = 0; (b) an objective:
the greedy ``step`` fit under a new name, one module in dode/distillation/objectives/ and one entry in
``OBJECTIVES``; (c) a flow stage that fits the model's Gaussian for the analytic first step: its configuration and
``STAGES`` entry in dode/pipeline/runs.py, its order in dode/pipeline/stages.py, its flow (wiring only) in
flows/stages.py, its deployment in prefect.yaml; then ``dode run newcomer`` runs it on Prefect's ephemeral server.
No test is edited: the tests parametrized over the registries and the solver properties (solvers, objectives,
stages, deployments) must select and pass the new names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SOLVER_MODULE = '''"""DPM-Solver++(2M) with the heun-type second-order term (Lu et al., 2022b), added by bench/newcomer.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dode.core.solvers.base import OneEvalPerStep, Stock, push
from dode.core.solvers.multistep import multistep_order
from dode.core.types import Evaluation, SolverState, Tensor


@dataclass(frozen=True)
class DPMSolverPPHeun(OneEvalPerStep):
    """Multistep DPM-Solver++(2M), data prediction, with diffusers' solver_type="heun" second-order term.

    With t = -log sigma, h = t_{k+1} - t_k, r_0 = h_{k-1}/h, p = expm1(-h) and D_0, D_1 the outputs of
    evaluations k, k-1: x_{k+1} = (sigma_{k+1}/sigma_k) x_k - p D_0 + (p/h + 1)(D_0 - D_1)/r_0 (the midpoint
    type, ``dpmpp_2m``, has -p (D_0 - D_1)/(2 r_0) instead). Orders follow ``multistep_order``; the step to
    sigma = 0 is x = D_0. Its first step is DPM-Solver++(1), bounded from sigma = inf, and the second-order
    term vanishes there (r_0 -> inf): it may start a flow-matching grid at t = 1.
    """

    name: str = "dpmpp_2m_heun"
    order: int = 2
    infinite_start = True
    stock = (Stock("DPMSolverMultistepScheduler",
                   {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "heun"}, "timesteps"),)

    def advance(self, sigmas: Tensor, state: SolverState, ev: Evaluation, denoised: Tensor) -> SolverState:
        k, sigma, sigma_next = state.k, ev.sigma, sigmas[state.k + 1]
        if sigma_next == 0:
            return push(state, ev, denoised)
        h = sigma.log() - sigma_next.log()
        p = torch.expm1(-h)
        x = (sigma_next / sigma) * ev.x - p * denoised
        if multistep_order(k, len(sigmas) - 1, self.order) == 1:
            return push(state, ev, x)
        prev = state.history[-1]
        r0 = (prev.sigma.log() - sigma.log()) / h
        return push(state, ev, x + (p / h + 1) * (denoised - prev.denoised) / r0)
'''

OBJECTIVE_MODULE = '''"""The greedy step fit under a new name, added by bench/newcomer.py."""

from __future__ import annotations

from dode.distillation.objectives.problem import FitProblem, FitResult
from dode.distillation.objectives.step import fit_step


def fit_newcomer_step(problem: FitProblem) -> FitResult:
    return fit_step(problem)
'''

STAGE_CONFIG = '''

class NewcomerRun(Config):
    """A newcomer's stage (added by bench/newcomer.py): the Gaussian of the model's own samples from the teacher's
    seeds, for the analytic first step."""

    model: ModelName = Field(DEFAULT_MODEL, description="model name (e.g. digits-ddpm), a diffusers folder or hub id")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
'''

STAGE_ORDER = '''

def run_newcomer(config: NewcomerRun, uri: str, ex: Executor) -> Outcome:
    """A newcomer's stage: the model, then the Gaussian of its own samples; value: the gaussian artifact id."""
    model_id = ex.call(steps.register_model, registry=uri, name=config.model)
    gaussian = ex.call(steps.gaussian, registry=uri, model_id=model_id, teacher=config.teacher)
    return Outcome(gaussian, [model_id, gaussian])
'''

STAGE_FLOW = '''

@flow(name="dode-newcomer", version=dode.__version__, task_runner=IN_PROCESS)
def newcomer_flow(config: NewcomerRun = NewcomerRun(), registry: str | None = None) -> str:
    """A newcomer's stage: the Gaussian of the model's own samples; returns its artifact id.

    Args:
        config: the newcomer stage (dode.pipeline.runs.NewcomerRun): the model and the teacher's seeds
        registry: registry path or URL (default $DODE_REGISTRY or ./dode-registry)
    """
    uri = registry_uri(registry)
    out = run_newcomer(config, uri, TaskExecutor())
    tasks.link_artifacts(open_registry(uri), out.artifacts)
    return out.value
'''

STAGE_DEPLOYMENT = """
  - name: newcomer
    description: A newcomer's stage (added by bench/newcomer.py).
    entrypoint: dode_flows.stages:newcomer_flow
    tags: [dode, stage]
    parameters:
      config: {model: mixture-smooth}
    work_pool: *process
"""

# In the copy: the stock scheduler the new solver names (its ``stock`` attribute, nothing else) against the solver,
# at lambda = 0 on the scheduler's own grid, from the same noise, on an exact Gaussian's noise prediction; and
# the midpoint-type dpmpp_2m on the same grid (that the comparison can fail).
PARITY = '''
import json, diffusers, torch, dode
from dode.models import GaussianDenoiser
stock = next(s for s in dode.get_solver("dpmpp_2m_heun").stock if s.takes)
scheduler = getattr(diffusers, stock.scheduler)(**stock.config)
scheduler.set_timesteps(8)
abar = scheduler.alphas_cumprod.double()
sigma = ((1 - abar) / abar).sqrt()
den = GaussianDenoiser(torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 4, 4), 0.5)
noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
x = noise
for t in scheduler.timesteps:
    xs = x / abar[t].sqrt()
    eps = (xs - den(xs, sigma[t].expand(len(x)))) / sigma[t]
    x = scheduler.step(eps.float(), t, x.float()).prev_sample.double()
grid = torch.cat([sigma[scheduler.timesteps], torch.zeros(1, dtype=torch.float64)])
start = noise / abar[scheduler.timesteps[0]].sqrt() / grid[0]
print(json.dumps({name: float((dode.sample(den, start, grid, name) - x).abs().max() / x.abs().max())
                  for name in ("dpmpp_2m_heun", "dpmpp_2m")}))
'''


def add_solver(copy: Path) -> None:
    (copy / "dode/core/solvers/dpmpp_2m_heun.py").write_text(SOLVER_MODULE)
    register(copy / "dode/core/solvers/__init__.py", "from dode.core.solvers.dpmpp_2m_heun import DPMSolverPPHeun\n",
             '    "dpmpp_2m_heun": DPMSolverPPHeun(),\n', "SOLVERS")


def add_objective(copy: Path) -> None:
    (copy / "dode/distillation/objectives/newcomer_step.py").write_text(OBJECTIVE_MODULE)
    register(copy / "dode/distillation/objectives/__init__.py",
             "from dode.distillation.objectives.newcomer_step import fit_newcomer_step\n",
             '    "newcomer_step": fit_newcomer_step,\n', "OBJECTIVES")


def add_stage(copy: Path) -> None:
    runs, order = copy / "dode/pipeline/runs.py", copy / "dode/pipeline/stages.py"
    stages, deployments = copy / "flows/stages.py", copy / "prefect.yaml"
    text = runs.read_text()
    at = text.index("\n\nSTAGES: dict")
    text = text[:at] + STAGE_CONFIG + text[at:]
    end = text.index("}", text.index("STAGES: dict"))
    runs.write_text(text[:end] + ', "newcomer": NewcomerRun' + text[end:])
    text = order.read_text().replace("from dode.pipeline.runs import ", "from dode.pipeline.runs import NewcomerRun, ", 1)
    order.write_text(text + STAGE_ORDER)
    text = stages.read_text().replace("from dode.pipeline.runs import ", "from dode.pipeline.runs import NewcomerRun, ", 1)
    text = text.replace("from dode.pipeline.stages import ", "from dode.pipeline.stages import run_newcomer, ", 1)
    stages.write_text(text + STAGE_FLOW)
    deployments.write_text(deployments.read_text() + STAGE_DEPLOYMENT)


def environment(copy: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PREFECT_HOME": str(copy / ".prefect")}


def python(copy: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, cwd=copy, capture_output=True, text=True,
                          env=environment(copy))


def run_stage(copy: Path) -> str:
    """``dode run newcomer`` in the copy, on a fresh registry: what it made, or its error."""
    command = ["run", "--quiet", "newcomer", "--teacher-n-samples", "64", "--registry", str(copy / "registry")]
    proc = python(copy, f"from dode.cli import main; raise SystemExit(main({command!r}))")
    out = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not out:
        return f"failed: {proc.stderr.strip()[-300:]}"
    check = python(copy, "from dode.store.gaussians import load_gaussian; from dode.store.registry import Registry; "
                         f"reg = Registry({str(copy / 'registry')!r}); art = reg.get({out[-1]!r}); "
                         "g = load_gaussian(reg, art); print(art.kind, art.params['n'], g.dim)")
    kind, n, dim = check.stdout.split() if check.returncode == 0 else ("failed", check.stderr[-200:], "")
    return f"{out[-1][:12]} ({kind} artifact: the Gaussian of {n} model samples, {dim} dimensions)"


def stock_parity(copy: Path) -> str:
    proc = python(copy, PARITY)
    if proc.returncode != 0:
        return f"failed: {proc.stderr.strip()[-300:]}"
    rel = json.loads(proc.stdout)
    return (f"max relative difference {rel['dpmpp_2m_heun']:.1e} (float32 rounding); the midpoint-type dpmpp_2m "
            f"on the same grid: {rel['dpmpp_2m']:.1e}")


# (name, the edit, the name the tests select with -k, tests that enumerate the registry or property it extends)
PATHS = [
    ("solver", add_solver, "dpmpp_2m_heun", ["tests/test_solvers.py", "tests/test_core.py",
                                            "tests/test_flow_matching.py", "tests/test_solver_properties.py"]),
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
    """One import after the others and one entry at the end of the registry dict ``name``."""
    text = registry.read_text()
    last_import = text.rindex("\nfrom ") + 1
    after = text.index("\n", last_import) + 1
    text = text[:after] + import_line + text[after:]
    start = text.index(f"{name}: dict")
    end = text.index("\n}\n", start)
    registry.write_text(text[: end + 1] + entry + text[end + 1:])


def run_tests(copy: Path, files: list[str], name: str) -> tuple[int, int, str]:
    """(passed, failed, pytest's summary line) for the tests in ``files`` selected by ``-k name``."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", name, *files],
                          check=False, cwd=copy, capture_output=True, text=True, env=environment(copy))
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
        parity = stock_parity(copy)
        ran = run_stage(copy)
        ok = ok and not parity.startswith("failed") and "gaussian artifact" in ran
        print(f"dpmpp_2m_heun at lambda = 0 vs its stock scheduler (built from its stock attribute): {parity}")
        print(f"dode run newcomer (the new stage, on Prefect's ephemeral server): {ran}")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
