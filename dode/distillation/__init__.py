"""Distillation: fitting D-ODE's parameters against a teacher (Kim, Tang & Yu, 2024, Sec. 4) -- how the fit is
configured (``config``), where the targets come from (``teacher``, ``teacher_parquet``), the fit itself
(``fit``: ``dode.distill``; ``stored``: from stored teacher states), its objectives (``objectives``), the
held-out guard (``guard``) and where the analytic first step's Gaussian comes from (``first_step``).

May import: ``dode.common``, ``dode.core``, ``dode.models``, ``dode.store``, ``dode.metrics``.
"""

from dode.common.lazy import lazy_face

__getattr__, __dir__ = lazy_face(__name__, {
    "FitConfig": ".config",
    "TeacherConfig": ".teacher",
    "distill": ".fit",
    "split": ".fit",
    "distill_from_states": ".stored",
    "OBJECTIVES": ".objectives",
    "get_objective": ".objectives",
})
