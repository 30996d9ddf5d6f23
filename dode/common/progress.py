"""Progress bars for long library work (teacher runs, distillation, feature extraction), off by default.

The command line turns them on for its run (``with progress.bars(not args.quiet): ...``); the library then
shows a tqdm bar on stderr for each long loop, only where stderr is a terminal. Library callers and tests
see nothing unless they turn bars on themselves. The switch is a context variable, so it reaches code
called through other layers (``dode run`` flows) without a parameter on every function in between.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Self

SHOW: ContextVar[bool] = ContextVar("dode_progress_bars", default=False)


@contextmanager
def bars(on: bool = True) -> Iterator[None]:
    """Show progress bars (on a terminal) for the library work inside this block."""
    token = SHOW.set(on)
    try:
        yield
    finally:
        SHOW.reset(token)


def bar(total: int | None, desc: str, unit: str = "it", *, lines: bool = False) -> Any:
    """A tqdm bar when bars are on and stderr is a terminal (tqdm's ``disable=None``), else a silent one; use it
    as a context manager and call ``.update(n)``. ``lines``: off a terminal (a log, a CI job), one line per
    ``LINE_EVERY`` of ``total`` instead of silence, for work of minutes or more."""
    from tqdm import tqdm

    if lines and SHOW.get() and total and not sys.stderr.isatty():
        return Lines(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=None if SHOW.get() else True, leave=False)


LINE_EVERY = 0.05  # a progress line per 5 % of the work, off a terminal


class Lines:
    """Progress as plain lines on stderr ("desc: 250/5000 sample (5%)"), one per ``LINE_EVERY`` of the total."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit, self.done, self.shown = total, desc, unit, 0, 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        self.done += n
        step = max(1, int(self.total * LINE_EVERY))
        if self.done // step > self.shown // step or self.done >= self.total > self.shown:
            print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%)",
                  file=sys.stderr, flush=True)
            self.shown = self.done
