"""D-ODE: Distilled-ODE solvers for diffusion models (Kim, Tang & Yu, CVPR 2024).

One scalar lambda_k per network evaluation of a base ODE solver, D~_k = D_k + lambda_k (D_k - D_{k-1}),
fitted in closed form against a teacher with teacher_factor x more steps from the same noise.

The rooms, lowest floor first (a room imports only from the rooms below it):

- ``dode.common``       shipped files, progress, devices, images, the configuration base
- ``dode.core``         the pure math in sigma space: types, schedules, grids, solvers, the sampling loop,
                        the D-ODE correction, the analytic first step's Gaussian, seeded noise
- ``dode.models``       adapters: analytic testbeds, diffusers VP and flow-matching models, the model registry
- ``dode.store``        on-disk formats and the content-addressed artifact registry (no compute)
- ``dode.metrics``      FID as pytorch-fid, FD on other features, the guard's feature maps
- ``dode.distillation`` the teacher, the fit and its objectives, the held-out guard, Gaussian fitting
- ``dode.training``     training the embedded digits models and classifier
- ``dode.integrations`` diffusers: the scheduler, pipelines, stock parity, export, prompt distillation
- ``dode.pipeline``     stage configurations, the sweep's plan and steps, sampling jobs, reports
- ``dode.cli``          the ``dode`` command line

The names below load lazily: ``import dode`` (or any lower room) loads nothing it does not use. This face itself
imports only ``dode.compat`` and ``dode.common.lazy`` (it sits on floor 1, beside ``dode.core``).
"""

from dode import compat
from dode.common.lazy import lazy_face

compat.install()

__getattr__, __dir__ = lazy_face(__name__, {
    "__version__": "dode.version",
    "Lambdas": "dode.core.correction",
    "dode_correct": "dode.core.correction",
    "fit_lambda": "dode.core.correction",
    "FirstStep": "dode.core.gaussian",
    "Gaussian": "dode.core.gaussian",
    "GridSpec": "dode.core.grids",
    "sample": "dode.core.sampling",
    "karras_sigmas": "dode.core.schedules",
    "refine": "dode.core.schedules",
    "vp_sigmas": "dode.core.schedules",
    "SOLVERS": "dode.core.solvers",
    "get_solver": "dode.core.solvers",
    "distill": "dode.distillation.fit",
    "FitConfig": "dode.distillation.config",
    "TeacherConfig": "dode.distillation.teacher",
    "DODEScheduler": "dode.integrations.diffusers.scheduler",
    "DODEFlowScheduler": "dode.integrations.diffusers.scheduler",
    "DODEPipeline": "dode.integrations.diffusers.pipeline",
    # diffusers loads a component ["dode", "DODEScheduler"] by the base class it finds under this name in dode
    "SchedulerMixin": "dode.integrations.diffusers.scheduler",
})

__all__ = ["SOLVERS", "DODEFlowScheduler", "DODEPipeline", "DODEScheduler", "FirstStep", "FitConfig", "Gaussian",
           "GridSpec", "Lambdas", "TeacherConfig", "__version__", "distill", "dode_correct", "fit_lambda",
           "get_solver", "karras_sigmas", "refine", "sample", "vp_sigmas"]
