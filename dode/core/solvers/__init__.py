"""The solver registry: every base ODE solver D-ODE can distil, by its public name."""

from __future__ import annotations

from dode.core.solvers.base import MAX_HISTORY, Solver
from dode.core.solvers.deis import DEIS
from dode.core.solvers.explicit import Euler, Heun
from dode.core.solvers.multistep import IPNDM, DPMSolverPP
from dode.core.solvers.singlestep import DPMSolverSinglestep
from dode.core.solvers.unipc import UniPC

SOLVERS: dict[str, Solver] = {
    "euler": Euler(),
    "heun": Heun(),
    "ipndm": IPNDM(),
    "deis": DEIS(),
    "dpm_solver_2": DPMSolverSinglestep("dpm_solver_2", 2),
    "dpm_solver_3": DPMSolverSinglestep("dpm_solver_3", 3, own_teacher="dpmpp_3m"),  # 3 does not divide factor 10
    "dpmpp_2m": DPMSolverPP("dpmpp_2m", 2),
    "dpmpp_3m": DPMSolverPP("dpmpp_3m", 3),
    "unipc": UniPC(),
    "unipc_2": UniPC("unipc_2", 2),  # diffusers' UniPCMultistepScheduler default (solver_order=2)
}

DEFAULT_SOLVER = "euler"  # the base solver a student uses unless told (dode.sample, the configurations)


def get_solver(name: str) -> Solver:
    """The registered solver called ``name``; a ValueError listing the valid names otherwise."""
    try:
        return SOLVERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}") from None


__all__ = ["DEFAULT_SOLVER", "MAX_HISTORY", "SOLVERS", "Solver", "get_solver"]
