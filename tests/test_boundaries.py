"""Package boundaries: the library never imports the orchestration layer (flows/, Prefect), its rooms import
only from the rooms below them, and no module of dode/ or flows/ takes part in an import cycle. Checked on the
source (every import statement, also those inside functions) and on a fresh interpreter (what ``import dode``,
``import dode.store`` and ``dode --help`` load)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dode", "flows")
FORBIDDEN_IN_DODE = ("flows", "prefect", "prefect_dask")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """Absolute names of every module ``name`` imports, anywhere in it (a ``from P import x`` of a
    submodule x counts as importing P.x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            subs = {f"{base}.{alias.name}" for alias in node.names} & known
            out |= subs or {base}
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of dode/ and flows/ it imports."""
    mods = modules()
    known = set(mods)
    return {name: imported(name, path, known) & known for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_covers_both_packages():
    graph = import_graph()
    assert {"dode", "dode.core.sampling", "dode.cli", "flows.cli", "flows.pipeline"} <= set(graph)
    assert "dode.pipeline.sweep" in graph["flows.pipeline"] and "dode.core.types" in graph["dode.core.sampling"]


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.split(".")[0] == "dode"))
def test_no_dode_module_imports_the_orchestration_layer(name):
    mods = modules()
    bad = sorted(m for m in imported(name, mods[name], set(mods)) if m.split(".")[0] in FORBIDDEN_IN_DODE)
    assert not bad, f"{name} imports {bad}"


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_dode_and_its_cli_do_not_import_prefect():
    code = (
        "import sys, dode, dode.cli, dode.distillation.stored, dode.store.trajectory\n"
        "parser = dode.cli.build_parser()\n"
        "assert 'run' in parser._subparsers._group_actions[0].choices, 'dode run is not registered'\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith(('prefect.', 'prefect_')))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


COMPUTE = ("dode.core.sampling", "dode.core.solvers", "dode.distillation", "dode.models", "dode.metrics",
           "dode.pipeline", "dode.training", "dode.integrations")
# The rooms of dode, by floor: a room imports only from rooms on lower floors (issue 25).
FLOORS = {
    "dode.version": 0, "dode.common": 0, "dode.compat": 0,  # compat names modules as strings only
    # The package face imports only dode.compat and dode.common.lazy; every other name it has is a string
    # (``lazy_face``), loaded on first use, so it sits just above them.
    "dode": 1, "dode.core": 1,
    "dode.models": 2, "dode.store": 2,
    "dode.metrics": 3,
    "dode.distillation": 4,
    "dode.training": 5, "dode.integrations": 5,
    "dode.pipeline": 6,  # the distill-pipeline stage runs dode.integrations.diffusers.distill
    "dode.cli": 7,
}


def room(module: str) -> str:
    return next(r for r in sorted(FLOORS, key=len, reverse=True) if module == r or module.startswith(r + "."))


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_every_module_of_dode_is_in_a_room_and_every_room_says_what_it_may_import():
    dode_modules = [n for n in modules() if n.split(".")[0] == "dode"]
    assert all(room(n) for n in dode_modules)
    for name in FLOORS:
        path = ROOT / name.replace(".", "/")
        if path.is_dir():
            doc = ast.get_docstring(ast.parse((path / "__init__.py").read_text())) or ""
            assert "May import" in doc or "imports" in doc, f"{name}/__init__.py does not say what it may import"


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.split(".")[0] == "dode"))
def test_rooms_import_only_from_lower_floors(name):
    mods = modules()
    up = sorted(m for m in imported(name, mods[name], set(mods)) & set(mods)
                if m.split(".")[0] == "dode" and room(m) != room(name) and FLOORS[room(m)] >= FLOORS[room(name)])
    assert not up, f"{name} (floor {FLOORS[room(name)]}) imports {up}"


def test_the_room_rule_catches_an_arrow_back_up():
    assert room("dode.store.manifest") == "dode.store" and room("dode.integrations.diffusers.scheduler") == \
        "dode.integrations"
    assert FLOORS[room("dode.core.sampling")] < FLOORS[room("dode.store.lambdas")]


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.startswith("dode.store")))
def test_storage_sits_below_compute(name):
    # Issues 18, 25: the store owns formats and reads; no sampler, teacher runner, model or fitting code under it,
    # also through the package (dode/__init__ is lazy, so nothing is skipped).
    bad = sorted(m for m in reachable(import_graph(), name) if m.startswith(COMPUTE))
    assert not bad, f"{name} reaches {bad}"


def test_importing_the_store_loads_no_compute_at_run_time():
    code = (
        "import sys, dode.store, dode.store.manifest, dode.store.registry\n"
        "import dode.store.lambdas, dode.store.gaussians, dode.store.trajectory\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({COMPUTE!r}) or m.startswith('dode.distill'))\n"
        "assert not bad, bad\n"
        "assert 'torch' not in sys.modules or 'dode.core.types' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_the_manifest_and_the_package_face_load_without_torch():
    code = "import sys, dode, dode.store.manifest, dode.version\nassert 'torch' not in sys.modules, 'torch loaded'\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_old_module_paths_are_the_same_modules_at_their_new_homes():
    import dode.diffusers_scheduler
    from dode.solvers.base import Solver

    import dode
    import dode.integrations.diffusers.scheduler
    from dode.core.solvers.base import Solver as NewSolver
    assert dode.diffusers_scheduler is dode.integrations.diffusers.scheduler and Solver is NewSolver
    assert dode.distill.__module__ == "dode.distillation.fit" and callable(dode.distill)
    assert dode.DODEScheduler is dode.integrations.diffusers.scheduler.DODEScheduler
