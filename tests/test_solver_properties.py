"""A solver is its module and one ``SOLVERS`` entry: what the rest of dode asks of a solver by name are attributes
of the solver (``dode.core.solvers.base.Solver``), and no module outside dode/core/solvers/ keeps a table of
solver names (it would have to be edited for every new solver)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from diffusers import DDPMScheduler

import dode
from dode.core.solvers.base import Solver, Stock
from dode.distillation.teacher import TeacherConfig, check_lands, check_official, official_cases
from dode.integrations.diffusers.export import diffusers_schedule
from dode.integrations.diffusers.stock import stock_solvers
from dode.models.flow import FLOW_SIGMA_MAX, check_flow_start

ROOT = Path(__file__).resolve().parent.parent
SOLVERS = frozenset(dode.SOLVERS)
SCANNED = ("dode", "flows", "bench")


def names(node: ast.AST) -> list[str] | None:
    """The string constants of a literal dict's keys or a literal set's, tuple's or list's elements."""
    items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
    if not isinstance(node, ast.Dict | ast.Set | ast.Tuple | ast.List) or not items:
        return None
    if all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items):
        return [i.value for i in items]
    return None


def holds_names(node: ast.AST) -> bool:
    """Whether a literal is solver names all through: a name, a collection or mapping of them, a lambda giving one."""
    if isinstance(node, ast.Constant):
        return node.value in SOLVERS
    if isinstance(node, ast.Dict):
        return bool(node.values) and all(holds_names(v) for v in node.values)
    if isinstance(node, ast.Lambda):
        return holds_names(node.body)
    return isinstance(node, ast.Set | ast.Tuple | ast.List) and bool(node.elts) and all(map(holds_names, node.elts))


def solver_tables(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, source) of every table of solver names: a dict keyed by them or of two or more entries whose values
    are all solver names (or collections of them, or lambdas giving one), a set of them; a constant tuple or list
    of two or more; the right side of ``in``. Not a configuration's one solver ({"solver": "euler"})."""
    found = []
    constants = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.AnnAssign) and n.value is not None]
    tested = [c for n in ast.walk(tree) if isinstance(n, ast.Compare) for op, c in zip(n.ops, n.comparators)
              if isinstance(op, ast.In | ast.NotIn)]
    for node in ast.walk(tree):
        keys = names(node)
        if isinstance(node, ast.Dict) and len(node.values) >= 2 and holds_names(node):
            found.append((node.lineno, ast.unparse(node)[:80]))
        elif keys is None or not set(keys) <= SOLVERS:
            continue
        elif isinstance(node, ast.Dict | ast.Set) or (len(keys) >= 2 and node in constants) or node in tested:
            found.append((node.lineno, ast.unparse(node)[:80]))
    return sorted(found)


def test_the_scan_finds_the_tables_it_forbids():
    planted = ('INFINITE = ("euler", "ipndm")\nSTOCK = {"euler": 1}\nOWN = {"dpm_solver_3"}\n'
               'def f(solver):\n    return solver in ("euler", "heun")\n'
               'DEFAULTS = {"solvers": ["euler", "dpmpp_2m"], "nfes": [3]}\nx = f("euler", {"solver": "heun"})\n'
               'BY_FAMILY = {"karras": ("euler", "heun"), "ddim": ("euler",)}\nBY_ORDER = {2: "dpmpp_2m", 3: "dpmpp_3m"}\n'
               'BY_CLASS = {"E": lambda c: "euler", "H": lambda c: "heun"}\n')
    assert [line for line, _ in solver_tables(ast.parse(planted))] == [1, 2, 3, 5, 8, 9, 10]


def test_no_module_outside_the_solvers_package_holds_a_table_of_solver_names():
    solvers_package = ROOT / "dode" / "core" / "solvers"
    tables = {}
    for path in sorted(p for room in SCANNED for p in (ROOT / room).rglob("*.py")):
        if solvers_package not in path.parents:
            found = solver_tables(ast.parse(path.read_text(), str(path)))
            if found:
                tables[str(path.relative_to(ROOT))] = found
    assert tables == {}, "move these per-solver properties onto the solvers (dode/core/solvers/base.py)"


def test_the_base_declares_every_property_with_its_default():
    class Bare(Solver):
        name, order, evals_per_step = "bare", 1, 1

    bare = Bare()
    assert (bare.infinite_start, bare.stock, bare.own_teacher, bare.official) == (False, (), None, ())
    assert bare.full_state(3, 5)


def test_each_property_is_read_where_the_tables_were():
    sigmas = dode.karras_sigmas(4, 0.002, FLOW_SIGMA_MAX)
    for name, solver in dode.SOLVERS.items():  # infinite start: the flow-matching grid from t = 1
        if solver.infinite_start:
            check_flow_start(name, sigmas)
        else:
            with pytest.raises(ValueError, match="cannot start at t = 1"):
                check_flow_start(name, sigmas)
    assert TeacherConfig.own("dpm_solver_3").solver == "dpmpp_3m" and TeacherConfig.own("heun").solver == "heun"
    assert official_cases() == "euler and heun on karras grids; euler on ddim grids"
    check_official(["euler", "heun"], "karras")
    with pytest.raises(ValueError, match=r"use alignment=exact for \['heun'\] on ddim grids"):
        check_official(["heun"], "ddim")
    with pytest.raises(ValueError, match="makes no full state"):
        check_lands("dpm_solver_3", 30, range(0, 31, 10))
    assert stock_solvers("DPMSolverMultistepScheduler") == {2: "dpmpp_2m", 3: "dpmpp_3m"}
    assert stock_solvers("DDIMScheduler") == {None: "euler"}


@pytest.mark.parametrize(("name", "flow"), sorted({(n, st.flow) for n, s in dode.SOLVERS.items() for st in s.stock
                                                   if st.takes}))
def test_a_solver_whose_stock_scheduler_takes_a_schedule_is_exported_for_it(name, flow):
    stock: Stock = next(st for st in dode.get_solver(name).stock if st.takes and st.flow == flow)
    if flow:  # a flow-matching model: the times t = sigma / (1 + sigma) of a grid from a finite sigma
        training = {"num_train_timesteps": 1000, "shift": 1.0}
        sigmas = [9.0, 1.0, 0.25, 0.0]
    else:  # a DDPM-trained model: the sigmas of integer training timesteps (what integer ``timesteps=`` take)
        training = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                    "beta_end": 0.012}
        abar = DDPMScheduler(**training).alphas_cumprod.double()[[900, 500, 100]]
        sigmas = [*((1 - abar) / abar).sqrt().tolist(), 0.0]
    spec = diffusers_schedule(dode.Lambdas([0.0] * 3, name, sigmas), training)["scheduler"]
    assert spec["class"] == stock.scheduler and stock.takes in spec["set_timesteps"]
    assert spec["config"] == ({"num_train_timesteps": 1000} if flow else training) | dict(stock.config)
