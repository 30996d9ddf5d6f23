"""D-ODE: Distilled-ODE solvers for diffusion models (Kim, Tang & Yu, CVPR 2024).

One scalar lambda_k per network evaluation of a base ODE solver, D~_k = D_k + lambda_k (D_k - D_{k-1}),
fitted in closed form against a teacher with teacher_factor x more steps from the same noise.
"""

from .correction import Lambdas, dode_correct, fit_lambda
from .distill import distill
from .sampling import sample
from .schedules import karras_sigmas, refine, vp_sigmas
from .solvers import SOLVERS, get_solver

__version__ = "0.1.0"

__all__ = [
    "SOLVERS",
    "Lambdas",
    "__version__",
    "distill",
    "dode_correct",
    "fit_lambda",
    "get_solver",
    "karras_sigmas",
    "refine",
    "sample",
    "vp_sigmas",
]
