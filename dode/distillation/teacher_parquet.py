"""The bridge from the teacher to its on-disk trajectory: ``write_teacher`` runs a teacher
(``dode.distillation.teacher.run_teacher``) and streams its states into the Parquet format ``dode.store.trajectory`` owns,
so that the store never imports the sampler."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dode.core.types import Denoiser, Tensor
from dode.distillation.teacher import TeacherConfig, run_teacher
from dode.store.trajectory import TrajectoryWriter


def write_teacher(
    path: str | os.PathLike,
    denoiser: Denoiser,
    noise: Tensor | Callable[[np.ndarray], Tensor],
    sigmas: Tensor,
    solver: str = TeacherConfig.model_fields["solver"].default,
    *,
    keep: Iterable[int] | None = None,
    sample_ids: Sequence[int] | None = None,
    meta: Mapping[str, Any] | None = None,
    denoised: bool = False,
    batch_size: int | None = None,
    compression: str = "none",
) -> Path:
    """Run a teacher (``dode.distillation.teacher.run_teacher``) from ``noise`` and stream its states into a trajectory file.

    ``noise`` is the initial states (n, *shape), or a function from a batch's sample ids to their
    initial states (e.g. ``partial(dode.core.rng.seeded_noise, shape=shape)`` with the seeds as
    ``sample_ids``), so that nothing of size n is ever held. Stores the states at grid indices
    ``keep`` (default: every index 0..len(sigmas)-1; pass the student targets, e.g.
    ``TeacherPlan.keep``, to store only those). Only the current state is held in
    memory; with ``batch_size`` the teacher runs batch by batch and each step is written as one row
    group per batch. ``meta`` adds e.g. the model fingerprint, teacher factor and seeds; the grid,
    solver and sample count are recorded automatically.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    steps = len(sigmas) - 1
    keep = set(range(steps + 1)) if keep is None else {int(i) for i in keep}
    if not keep or min(keep) < 0 or max(keep) > steps:
        raise ValueError(f"keep must be grid indices in 0..{steps}; got {sorted(keep)[:10]}")
    if callable(noise) and sample_ids is None:
        raise ValueError("noise is a function of the sample ids: pass them as sample_ids (e.g. the seeds)")
    n = len(sample_ids) if callable(noise) else len(noise)
    ids = np.arange(n, dtype=np.int64) if sample_ids is None else np.asarray(sample_ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"{len(ids)} sample ids for {n} noise samples")
    batch = max(n, 1) if batch_size is None else int(batch_size)
    if batch < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")

    def initial(start: int) -> Tensor:
        x = noise(ids[start : start + batch]) if callable(noise) else noise[start : start + batch]
        rows = len(ids[start : start + batch])
        if x.ndim < 2 or len(x) != rows:
            raise ValueError(f"noise for sample ids {ids[start]}..{ids[start + rows - 1]} has shape {tuple(x.shape)}; "
                             f"expected ({rows}, *sample_shape)")
        return x

    x0 = initial(0)
    info = {"sigmas": sigmas.tolist(), "solver": solver, "n_samples": n, "kept": sorted(keep), **(meta or {})}
    with TrajectoryWriter(path, tuple(x0.shape[1:]), info, denoised=denoised, compression=compression) as w:
        for start in range(0, n, batch):
            x0 = x0 if start == 0 else initial(start)
            batch_ids = ids[start : start + batch]

            def sink(index: int, x: Tensor, den: Tensor | None, batch_ids: np.ndarray = batch_ids) -> None:
                w.write_step(index, x, sigma=float(sigmas[index]), sample_ids=batch_ids,
                             denoised=den if w.denoised else None)

            run_teacher(denoiser, x0, sigmas, solver, keep, sink)
    return Path(path)
