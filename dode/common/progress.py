"""Progress bars for long library work (teacher runs, distillation, feature extraction), off by default.

The command line turns them on for its run (``with progress.bars(not args.quiet): ...``); the library then
shows a tqdm bar on stderr for each long loop, only where stderr is a terminal. Library callers and tests
see nothing unless they turn bars on themselves. The switch is a context variable, so it reaches code
called through other layers (``dode run`` flows) without a parameter on every function in between.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

SHOW: ContextVar[bool] = ContextVar("dode_progress_bars", default=False)


@contextmanager
def bars(on: bool = True) -> Iterator[None]:
    """Show progress bars (on a terminal) for the library work inside this block."""
    token = SHOW.set(on)
    try:
        yield
    finally:
        SHOW.reset(token)


def bar(total: int | None, desc: str, unit: str = "it") -> Any:
    """A tqdm bar when bars are on and stderr is a terminal (tqdm's ``disable=None``), else a silent one; use it
    as a context manager and call ``.update(n)``."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if SHOW.get() else True, leave=False)
