"""Training a classifier of digits, the one loop the FD-digits classifier (``dode.training``) and the guard's
feature maps (``dode.metrics.guard_features``) share: seeded, deterministic kernels, AdamW with warm-up and
cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from dode.core.types import Tensor


def check_counts(where: str, **counts: int) -> None:
    """One ValueError unless every count is an integer >= 1."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name} must be an integer >= 1, got {value!r}")


def batches(n: int, batch: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Indices of ``batch`` items at a time, cycling through seeded permutations of range(n)."""
    stream = torch.empty(0, dtype=torch.long)
    while True:
        while len(stream) < batch:
            stream = torch.cat([stream, torch.randperm(n, generator=gen)])
        yield stream[:batch]
        stream = stream[batch:]


def warmup_cosine(steps: int, warmup: int, floor: float = 0.1) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up, then cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(steps - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@contextmanager
def deterministic(seed: int) -> Iterator[torch.Generator]:
    """Seed torch, use deterministic kernels while training, and hand out the data generator."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def fit_classifier(model: nn.Module, images: Tensor, labels: Tensor, train: Tensor, gen: torch.Generator, *,
                   steps: int, batch: int, lr: float, weight_decay: float, warmup: int) -> Tensor:
    """Cross-entropy training of ``model`` on the ``train`` rows, ``batch`` at a time from ``gen``'s permutations:
    AdamW, linear warm-up over ``warmup`` steps, then cosine decay to 0. Returns the last batch's loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup, 0.0))
    order = batches(len(train), batch, gen)
    for _ in range(steps):
        idx = train[next(order)]
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return loss


__all__ = ["batches", "check_counts", "deterministic", "fit_classifier", "warmup_cosine"]
