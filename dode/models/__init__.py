"""The model registry: names -> sigma-space denoisers, plus diffusers folders and hub ids by path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..types import Denoiser
from .analytic import GaussianDenoiser, MixtureDenoiser, digits_mixture
from .vp import EDMDenoiser, VPDenoiser

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
EMBEDDED_MODEL_DIR = DATA_DIR / "models" / "digits-ddpm"


@dataclass(frozen=True)
class Model:
    """A denoiser with what the pipeline needs to know about it."""

    name: str
    denoiser: Denoiser
    shape: tuple[int, ...]  # one sample's shape, e.g. (1, 8, 8)
    fingerprint: str  # sha256 of the weights / analytic parameters


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().to(torch.float64).numpy().tobytes())
    return h.hexdigest()


def _gaussian(device: str) -> Model:
    den = GaussianDenoiser(torch.zeros(1, 8, 8), 0.5)
    return Model("gaussian", den, (1, 8, 8), tensor_fingerprint(den.mu, torch.tensor(den.s)))


def _mixture(name: str, std: float, per_class: bool) -> Callable[[str], Model]:
    def load(device: str) -> Model:
        den = digits_mixture(std, per_class=per_class)
        return Model(name, den, den.shape, tensor_fingerprint(den.weights, den.means, den.stds))

    return load


def _diffusers(path: str | Path, name: str, device: str) -> Model:
    den = VPDenoiser.from_pretrained(str(path), device=device)
    h = hashlib.sha256()
    for key, value in sorted(den.model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().to(torch.float64).numpy().tobytes())
    size = den.model.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return Model(name, den, (den.model.config.in_channels, *size), h.hexdigest())


MODELS: dict[str, Callable[[str], Model]] = {
    "gaussian": _gaussian,
    "mixture-smooth": _mixture("mixture-smooth", 0.35, per_class=True),
    "mixture-digits": _mixture("mixture-digits", 0.1, per_class=False),
    "digits-ddpm": lambda device: _diffusers(EMBEDDED_MODEL_DIR, "digits-ddpm", device),
}


def load_model(name: str, *, device: str = "cpu") -> Model:
    """A registered model by name, or a diffusers pipeline folder / hub id (``VPDenoiser``)."""
    if name in MODELS:
        return MODELS[name](device)
    if Path(name).is_dir() or "/" in name:
        return _diffusers(name, name, device)
    raise ValueError(
        f"unknown model {name!r}; choose one of {sorted(MODELS)}, a diffusers pipeline folder, or a hub id"
    )


__all__ = [
    "DATA_DIR",
    "EMBEDDED_MODEL_DIR",
    "MODELS",
    "EDMDenoiser",
    "GaussianDenoiser",
    "MixtureDenoiser",
    "Model",
    "VPDenoiser",
    "digits_mixture",
    "load_model",
    "tensor_fingerprint",
]
