"""Numbers with their spread: a metric as the mean over SETS disjoint evaluation sets, with their standard deviation.

One Fréchet distance of 2,000 samples spreads by about ±13 % from one set of seeds to another (issue 26), as
much as the differences a sweep reports. So a score is measured on SETS evaluation sets cut from the samples by
seed, set k holding the seeds s with s mod SETS = k: disjoint by construction, each an independent draw of the
sampler. The score is their mean, its spread their sample standard deviation (ddof 1); a seed met twice is an
error (its set would overlap another draw of itself).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

SETS = 3  # disjoint evaluation sets per score


def seed_set(seed: int, sets: int = SETS) -> int:
    """The evaluation set of ``seed``: seed mod ``sets``."""
    return seed % sets


def split_by_seed(chunks: Iterable[tuple[Sequence[int], np.ndarray]], sets: int = SETS
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """(set, rows) for each set present in each (seeds, rows) chunk, rows in chunk order; a ValueError for a
    seed met twice, or fewer than two sets."""
    if isinstance(sets, bool) or not isinstance(sets, int) or sets < 2:
        raise ValueError(f"a spread needs at least 2 disjoint evaluation sets, got sets={sets!r}")
    seen: set[int] = set()
    for seeds, rows in chunks:
        seeds = [int(s) for s in seeds]
        repeated = seen.intersection(seeds) | {s for s, count in Counter(seeds).items() if count > 1}
        if repeated:
            raise ValueError(f"seed {min(repeated)} occurs twice in the samples: evaluation sets would overlap; "
                             "sample each seed once")
        seen.update(seeds)
        index = np.array([seed_set(s, sets) for s in seeds])
        for k in range(sets):
            if (index == k).any():
                yield k, rows[index == k]


def check_disjoint(seed_sets: Sequence[Iterable[int]]) -> None:
    """A ValueError naming a seed that two evaluation sets share."""
    seen: dict[int, int] = {}
    for k, seeds in enumerate(seed_sets):
        for s in seeds:
            if seen.setdefault(int(s), k) != k:
                raise ValueError(f"evaluation sets {seen[int(s)]} and {k} share seed {int(s)}; they must be disjoint")


def spread(values: Sequence[float]) -> dict[str, float | list[float]]:
    """{"value": the mean, "spread": the sample standard deviation (ddof 1), "values": each set's}."""
    values = [float(v) for v in values]
    if len(values) < 2:
        raise ValueError(f"a spread needs at least 2 values, got {len(values)}")
    mean = sum(values) / len(values)
    return {"value": mean, "spread": math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)),
            "values": values}


def with_spread(value: float | None, spread_: float | None) -> str:
    """``value ± spread`` (4 and 2 significant digits), the value alone where no spread is known, a dash for none."""
    if value is None:
        return "—"
    return f"{value:.4g}" if spread_ is None else f"{value:.4g} ± {spread_:.2g}"
