"""The pipeline a sweep runs -- teachers -> lambdas -> samples -> scores -> report -- as plain library code: its
stage configurations (``runs``), its plan (``sweep``), its steps (``steps``) in order (the sweep's, ``sweep_run``;
each single stage's, a diffusers pipeline's prompt distillation among them, ``stages``), sampling at scale
(``generate``), the report and its plots, and the command lines it prints (``commands``). The Prefect flows (the ``flows`` package) only wire these steps into tasks.

May import: every room below ``dode.cli`` (``dode.integrations`` for the distill-pipeline stage).
"""

from dode.common.lazy import lazy_face

__getattr__, __dir__ = lazy_face(__name__, {
    "DistillRun": ".runs", "PipelineRun": ".runs", "SampleRun": ".runs", "ScoreRun": ".runs",
    "TeacherRun": ".runs", "PromptDistillRun": ".runs",
    "SamplingConfig": ".generate", "SamplingJob": ".generate", "run_sampling": ".generate",
    "run_pipeline": ".sweep_run", "run_teacher": ".stages", "run_distill": ".stages", "run_sample": ".stages",
    "run_score": ".stages", "run_distill_pipeline": ".stages",
})
