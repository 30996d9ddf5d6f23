"""What lambdas were fitted for, checked where they are used: grid, solver, correction flavour and first step.

Explicit grids stay explicit (k-diffusion's rule): lambdas imply the grid they were fitted on
(``Lambdas.sigmas``, learned or not) when none is given; a grid passed with them must be that grid. A
different one, the start grid a learned grid was fitted from (``fit["start_sigmas"]``) included, is an
error, never silently replaced: the weights lambda_k of D~_k = D_k + lambda_k (D_k - D_{k-1})
(Kim et al., 2024, eq. 9) belong to the sigma_k they were fitted at.
"""

from __future__ import annotations

import torch

from dode.core.correction import Lambdas, floats
from dode.core.gaussian import FirstStep
from dode.core.types import Tensor


def same_grid(a: Tensor, b: Tensor) -> bool:
    """Two sigma grids equal up to float64 rounding."""
    a, b = (g.detach().to("cpu", torch.float64) for g in (a, b))
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-9, atol=1e-12))


def fitted_grid(lambdas: Lambdas) -> Tensor:
    """The grid the lambdas were fitted on (float64, CPU)."""
    return torch.tensor(lambdas.sigmas, dtype=torch.float64)


def implied_grid(lambdas: Lambdas, sigmas: Tensor | None = None) -> Tensor:
    """The grid to sample ``lambdas`` on: their own when ``sigmas`` is None, else ``sigmas`` if it is their own;
    a ValueError saying to drop it or pass theirs otherwise."""
    own = fitted_grid(lambdas)
    if sigmas is None:
        return own
    if same_grid(own, sigmas):
        return sigmas
    start = lambdas.fit.get("start_sigmas")
    learned = start is not None and same_grid(torch.tensor(floats(start, "fit.start_sigmas"), dtype=torch.float64),
                                              sigmas)
    given = (f"the start grid their learned {len(own) - 1}-step grid was fitted from" if learned
             else f"a different {len(sigmas) - 1}-step grid starting {[round(float(s), 6) for s in sigmas[:3]]}")
    raise ValueError(f"these lambdas were fitted on their own {len(own) - 1}-step grid starting "
                     f"{list(lambdas.sigmas[:3])}, and {given} was passed with them; drop the grid (the lambdas "
                     "imply theirs) or pass their own (lambdas.sigmas), or distill lambdas on that grid")


def check_sampler(lambdas: Lambdas, solver: str, correction: str) -> None:
    """A ValueError unless the lambdas were fitted for this solver and correction flavour."""
    if solver != lambdas.solver:
        raise ValueError(f"these lambdas were fitted for solver {lambdas.solver!r}, not {solver!r}; "
                         f"sample with solver={lambdas.solver!r} or distill new lambdas")
    if correction != lambdas.correction:
        raise ValueError(f"these lambdas use the {lambdas.correction!r} correction, not {correction!r}; "
                         f"pass correction={lambdas.correction!r}")


def implied_first(lambdas: Lambdas, first: FirstStep | None) -> FirstStep | None:
    """The first step to sample the lambdas with: their own; a different one passed with them is an error."""
    own = lambdas.first
    same = own is not None and first is not None and (first.kind, first.gaussian.fingerprint) == (
        own.kind, own.gaussian.fingerprint)
    if first is not None and not same:
        raise ValueError("these lambdas were fitted with " + (f"the {own.kind!r} first step of another Gaussian"
                         if own else "the network's first step") + "; sample without passing a first step "
                         "(the lambdas carry their own) or distill lambdas with this one")
    return own
