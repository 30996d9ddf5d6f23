"""The module paths of dode before its rooms (``dode.diffusers_scheduler``, ``dode.solvers``, ...), kept as
aliases of their new homes: ``import dode.diffusers_scheduler`` gives the very module object
``dode.integrations.diffusers.scheduler`` (same classes, so isinstance checks and saved configs keep working).

``dode.distill`` stays the function (``dode.distillation.fit.distill``); its module is ``dode.distillation.fit``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

MOVED = {
    "dode.types": "dode.core.types",
    "dode.rng": "dode.core.rng",
    "dode.schedules": "dode.core.schedules",
    "dode.grids": "dode.core.grids",
    "dode.gaussian": "dode.core.gaussian",
    "dode.correction": "dode.core.correction",
    "dode.fitted": "dode.core.fitted",
    "dode.sampling": "dode.core.sampling",
    "dode.solvers": "dode.core.solvers",
    "dode.devices": "dode.common.devices",
    "dode.images": "dode.common.images",
    "dode.packaged": "dode.common.packaged",
    "dode.progress": "dode.common.progress",
    "dode.config": "dode.distillation.config",
    "dode.teacher": "dode.distillation.teacher",
    "dode.teacher_parquet": "dode.distillation.teacher_parquet",
    "dode.distill_stored": "dode.distillation.stored",
    "dode.guard": "dode.distillation.guard",
    "dode.objectives": "dode.distillation.objectives",
    "dode.first_step": "dode.distillation.first_step",
    "dode.generate": "dode.pipeline.generate",
    "dode.runs": "dode.pipeline.runs",
    "dode.sweep": "dode.pipeline.sweep",
    "dode.sweep_run": "dode.pipeline.sweep_run",
    "dode.steps": "dode.pipeline.steps",
    "dode.report": "dode.pipeline.report",
    "dode.plots": "dode.pipeline.plots",
    "dode.cli.commands": "dode.pipeline.commands",
    "dode.diffusers_scheduler": "dode.integrations.diffusers.scheduler",
    "dode.diffusers_flow": "dode.integrations.diffusers.flow",
    "dode.diffusers_pipeline": "dode.integrations.diffusers.pipeline",
    "dode.diffusers_stock": "dode.integrations.diffusers.stock",
    "dode.export_diffusers": "dode.integrations.diffusers.export",
    "dode.pipeline_distill": "dode.integrations.diffusers.distill",
}


def new_home(name: str) -> str | None:
    """The current module path of the old path ``name`` (also of a module below an old package), or None."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


class AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new home (one object under two names)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if new_home(name) else None

    def __init__(self) -> None:
        self.own_specs: dict[str, importlib.machinery.ModuleSpec] = {}  # by alias, between create and exec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(new_home(spec.name))
        self.own_specs[spec.name] = module.__spec__  # the import machinery sets the alias's spec on it next
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Already executed under its new name: only its own spec is put back."""
        module.__spec__ = self.own_specs.pop(module.__spec__.name)


def install() -> None:
    """Put the alias finder first on ``sys.meta_path``, once (first, so that a module below an old package path
    is never found by the path finder and executed a second time under its old name)."""
    if not any(isinstance(finder, AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())
