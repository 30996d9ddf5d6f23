"""Built-in reference data per model: the images its samples are compared with by the Fréchet metrics.

A model names its reference data (``Model.reference``, a key of ``REFERENCE_DATA``): exact draws from
an analytic model's data distribution, or the 1,797 bundled 8x8 digits the embedded digits DDPM was
trained on. A model with none is scored against statistics given by the caller (a "reference-stats"
artifact made with ``dode fid DATA_FOLDER --register KEY``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dode.common.images import to_uint8
from dode.metrics.digits import load_digits_images
from dode.models import GaussianDenoiser, MixtureDenoiser, Model


def exact_draws(m: Model, n: int, seed: int) -> tuple[np.ndarray, str]:
    """``n`` exact draws x_0 ~ p_data of an analytic model (a Gaussian N(mu, s^2 I) or a Gaussian mixture)."""
    den, gen, source = m.denoiser, torch.Generator().manual_seed(seed), f"exact-draws-{n}-seed{seed}"
    if isinstance(den, MixtureDenoiser):
        return to_uint8(den.sample_data(n, gen)), source
    if isinstance(den, GaussianDenoiser):
        return to_uint8(den.mu + den.s * torch.randn((n, *m.shape), generator=gen, dtype=torch.float64)), source
    raise ValueError(f"model {m.name!r} has no analytic data distribution to draw exact samples from")


def sklearn_digits(m: Model, n: int, seed: int) -> tuple[np.ndarray, str]:
    """All 1,797 bundled 8x8 digits (scikit-learn's copy of the UCI set), whatever ``n`` and ``seed``."""
    return to_uint8(load_digits_images()[0]), "sklearn-digits-1797"


REFERENCE_DATA: dict[str, Callable[[Model, int, int], tuple[np.ndarray, str]]] = {
    "exact-draws": exact_draws,
    "sklearn-digits": sklearn_digits,
}


def reference_images(m: Model, n: int, seed: int) -> tuple[np.ndarray, str]:
    """uint8 images (B, C, H, W) of the model's data distribution, and a name for where they come from."""
    if m.reference is None:
        raise ValueError(f"no built-in reference data for model {m.name!r}; pass reference=<id of a 'reference-stats' "
                         "artifact> (make one with `dode fid DATA_FOLDER --register KEY`)")
    if m.reference not in REFERENCE_DATA:
        raise ValueError(f"model {m.name!r} names unknown reference data {m.reference!r}; "
                         f"choose one of {sorted(REFERENCE_DATA)}")
    return REFERENCE_DATA[m.reference](m, n, seed)
