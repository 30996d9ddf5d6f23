"""The default registry location, for entry points (the CLI, the flows); the ``Registry`` has no default.

``--registry URI`` when given, else ``$DODE_REGISTRY``, else ``./dode-registry`` in the working directory (as
MLflow's ``./mlruns``): never inside the installed package or the source tree it was installed from.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_REGISTRY_NAME = "dode-registry"


def default_registry() -> Path:
    """``./dode-registry``, as an absolute path (tasks on other processes get the same folder)."""
    return Path.cwd() / DEFAULT_REGISTRY_NAME


def registry_location(uri: str | os.PathLike | None = None) -> str:
    """``uri``, else ``$DODE_REGISTRY``, else ``./dode-registry`` (absolute)."""
    return str(uri or os.environ.get("DODE_REGISTRY") or default_registry())
