"""Package boundaries: the library never imports the orchestration layer (flows/, Prefect), and no module
of dode/ or flows/ takes part in an import cycle. Checked on the source (every import statement, also those
inside functions) and on a fresh interpreter (what ``import dode`` and ``dode --help`` load)."""

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
    assert {"dode", "dode.sampling", "dode.cli", "flows.cli", "flows.pipeline"} <= set(graph)
    assert "dode.sweep" in graph["flows.pipeline"] and "dode.types" in graph["dode.sampling"]


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
        "import sys, dode, dode.cli, dode.distill_stored, dode.store.trajectory\n"
        "parser = dode.cli.build_parser()\n"
        "assert 'run' in parser._subparsers._group_actions[0].choices, 'dode run is not registered'\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith(('prefect.', 'prefect_')))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


COMPUTE = ("dode.sampling", "dode.teacher", "dode.generate", "dode.distill", "dode.distill_stored", "dode.models",
           "dode.solvers", "dode.objectives", "dode.guard", "dode.sweep", "dode.steps")


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others (``dode`` itself, the package, left out: a
    submodule's ``from .. import __version__`` reads a constant, not the package's imports)."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen - {"dode"}:
            seen.add(nxt)
            todo.append(nxt)
    return seen


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.startswith("dode.store")))
def test_storage_sits_below_compute(name):
    # Issue 18: the store owns formats and reads; no sampler, teacher runner, model or fitting code under it.
    bad = sorted(m for m in reachable(import_graph(), name) if m.startswith(COMPUTE))
    assert not bad, f"{name} reaches {bad}"
