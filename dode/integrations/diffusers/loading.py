"""What makes a saved DODEScheduler / DODEPipeline folder load the diffusers way, in a fresh process.

diffusers (0.4x) imports a component's library only if it is one of its own (diffusers, transformers, ...), the
caller imported it already, or the component's folder ships it as code (loaded with ``trust_remote_code=True``).
So ``save_pretrained`` writes, beside the config, a one-line loader module that imports the class from the
installed ``dode`` package; ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` then loads the
folder with no prior ``import dode``. The loader holds no code of its own: it is checked to be exactly this text
before ``DODEPipeline.from_pretrained`` trusts it on the caller's behalf.
"""

from __future__ import annotations

import json
from pathlib import Path

LOADER_HEADER = '"""Loads {name} from the installed dode package (pip install dode); see dode.integrations.diffusers.loading."""\n\n'


def loader_source(module: str, name: str) -> str:
    """The loader module's text: a docstring and one import."""
    return LOADER_HEADER.format(name=name) + f"from {module} import {name}  # noqa: F401\n"


def write_loader(folder: str | Path, file_stem: str, cls: type) -> None:
    """``folder/<file_stem>.py``: the loader of ``cls``, imported from its dode module."""
    Path(folder, f"{file_stem}.py").write_text(loader_source(cls.__module__, cls.__name__))


def is_dode_loader(folder: str | Path, file_stem: str, cls: type) -> bool:
    """Whether ``folder/<file_stem>.py`` is exactly the loader ``write_loader`` writes for ``cls``."""
    path = Path(folder, f"{file_stem}.py")
    return path.is_file() and path.read_text() == loader_source(cls.__module__, cls.__name__)


def point_model_index_at_loader(folder: str | Path, file_stem: str, cls: type) -> None:
    """model_index.json's ``_class_name`` as diffusers' custom pipelines have it: [loader module, class]."""
    path = Path(folder, "model_index.json")
    index = json.loads(path.read_text())
    index["_class_name"] = [file_stem, cls.__name__]
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
