"""The solver registry: every base ODE solver D-ODE can distil, by its public name."""

from __future__ import annotations

from .base import MAX_HISTORY, Solver
from .explicit import Euler, Heun
from .multistep import DPMPP2M, IPNDM

SOLVERS: dict[str, Solver] = {
    "euler": Euler(),
    "heun": Heun(),
    "ipndm": IPNDM(),
    "dpmpp_2m": DPMPP2M(),
}


def get_solver(name: str) -> Solver:
    """The registered solver called ``name``; a ValueError listing the valid names otherwise."""
    try:
        return SOLVERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}") from None


__all__ = ["SOLVERS", "MAX_HISTORY", "Solver", "get_solver"]
