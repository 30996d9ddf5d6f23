"""The pure math, in sigma space (``x = x0 + sigma * n``; a denoiser returns x0): the types, noise-level grids
(``schedules``, ``grids``), the base solvers (``solvers``: one file each, registered in ``solvers/__init__``),
the sampling loop (``sampling``), the D-ODE correction (``correction``), what lambdas were fitted for
(``fitted``), the analytic first step's Gaussian (``gaussian``) and per-sample seeded noise (``rng``).

No I/O, no hidden state. May import: ``dode.common`` and torch.
"""

from dode.common.lazy import lazy_face

__getattr__, __dir__ = lazy_face(__name__, {
    "Denoiser": ".types", "Evaluation": ".types", "SolverState": ".types", "Tensor": ".types",
    "karras_sigmas": ".schedules", "refine": ".schedules", "vp_sigmas": ".schedules",
    "GridSpec": ".grids", "FAMILIES": ".grids",
    "SOLVERS": ".solvers", "Solver": ".solvers", "get_solver": ".solvers",
    "sample": ".sampling", "integrate": ".sampling",
    "CORRECTIONS": ".correction", "Lambdas": ".correction", "dode_correct": ".correction",
    "fit_lambda": ".correction",
    "FIRST_STEPS": ".gaussian", "FirstStep": ".gaussian", "Gaussian": ".gaussian",
    "MAX_SEED": ".rng", "seeded_noise": ".rng",
})
