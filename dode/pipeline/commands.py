"""Shell command lines the CLI, the reports and the flows print for people to run (the registry builds none)."""

from __future__ import annotations

import shlex
from typing import Any

from dode.store.manifest import Artifact


def get_command(registry: Any, art: Artifact, out: str | None = None) -> str:
    """The ``dode artifacts get`` command line that downloads ``art`` from ``registry``, verified, into ``out``
    (default: the id's first 12 digits): works on any machine that reaches the registry, where a file:// URL
    does not."""
    return (f"dode artifacts get {art.id} --registry {shlex.quote(registry.uri)} "
            f"--out {shlex.quote(out or art.id[:12])}")
