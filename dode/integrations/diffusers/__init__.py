"""dode the diffusers way: ``DODEScheduler`` / ``DODEFlowScheduler`` (``scheduler``, ``flow``), a drop-in
scheduler for any pipeline; ``DODEPipeline`` (``pipeline``) for UNet2DModel folders; which stock schedulers
dode reproduces at lambda = 0 (``stock``); ``--format diffusers`` exports (``export``); lambdas distilled through a
text-to-image pipeline (``distill``). Saved folders hold no code: both classes live in ``dode`` for diffusers'
loader (``import dode`` + ``DiffusionPipeline.from_pretrained(folder)``).

May import: ``dode.common``, ``dode.core``, ``dode.models``, ``dode.store``, ``dode.distillation``.
"""

from dode.common.lazy import lazy_face

__getattr__, __dir__ = lazy_face(__name__, {
    "DODEScheduler": ".scheduler", "DODEFlowScheduler": ".scheduler", "DODESchedulerOutput": ".scheduler",
    "DODEPipeline": ".pipeline",
    "distill_pipeline": ".distill",
    "export_lambdas": ".export",
})
