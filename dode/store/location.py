"""The default registry location, for entry points (the CLI, the flows); the ``Registry`` has no default.

``--registry URI`` when given, else ``$DODE_REGISTRY``, else ``<checkout>/data/registry``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY = REPO_ROOT / "data" / "registry"


def registry_location(uri: str | os.PathLike | None = None) -> str:
    """``uri``, else ``$DODE_REGISTRY``, else ``<checkout>/data/registry``."""
    return str(uri or os.environ.get("DODE_REGISTRY") or DEFAULT_REGISTRY)
