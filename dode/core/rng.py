"""Per-sample seeded noise: sample k depends on its seed only, never on its batch, shard or device.

EDM's ``StackedRandomGenerator`` idea (Karras et al., 2022, ``generate.py``): one generator per sample.
The generators run on the CPU in float64, so a seed gives the same noise on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dode.core.types import Tensor

MAX_SEED = 2**63 - 1


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds as Python ints, or one ValueError naming the first bad seed."""
    out = [int(s) for s in seeds]
    for s, given in zip(out, seeds):
        if s != given or not 0 <= s <= MAX_SEED:
            raise ValueError(f"seeds must be integers in [0, 2**63 - 1], got {given!r}")
    return out


def seeded_noise(
    seeds: Sequence[int], shape: Sequence[int], *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64
) -> Tensor:
    """Unit Gaussian noise of shape (len(seeds), *shape): row k is ``randn(shape)`` of ``Generator().manual_seed(seeds[k])``."""
    seeds = check_seeds(seeds)
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    noise = torch.stack(rows) if rows else torch.empty((0, *shape), dtype=torch.float64)
    return noise.to(device=device, dtype=dtype)
