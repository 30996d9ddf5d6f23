"""The model registry: names -> sigma-space denoisers, plus diffusers folders and hub ids by path (``load_model``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dode.common.packaged import DATA_DIR, MODELS_DIR
from dode.core.types import Denoiser
from dode.models.analytic import GaussianDenoiser, MixtureDenoiser, digits_mixture
from dode.models.flow import FlowDenoiser, FlowSchedule, is_flow_folder, load_flow_pipeline
from dode.models.folders import check_model_folder, check_unet_config
from dode.models.vp import EDMDenoiser, VPDenoiser

EMBEDDED_MODEL_DIR = MODELS_DIR / "digits-ddpm"
FLOW_MODEL_DIR = MODELS_DIR / "digits-flow"  # the flow-matching twin (train_digits_model, objective="flow")
ANALYTIC_METRICS = ("fd-pixels",)  # analytic models: Fréchet distance on raw pixels, to exact draws


@dataclass(frozen=True)
class Model:
    """A denoiser with what the pipeline needs to know about it."""

    name: str
    denoiser: Denoiser
    shape: tuple[int, ...]  # one sample's shape, e.g. (1, 8, 8)
    fingerprint: str  # sha256 of the weights / analytic parameters
    metrics: tuple[str, ...] = ()  # the Fréchet metrics that suit its samples (dode.metrics.scores.METRICS)
    reference: str | None = None  # its built-in reference data (dode.metrics.reference.REFERENCE_DATA)
    folder: Path | None = None  # the diffusers folder it loads from, if any
    guard_features: str | None = None  # the guard's feature map (dode.metrics.guard_features.GUARD_FEATURES); None: pixels


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().to(torch.float64).numpy().tobytes())
    return h.hexdigest()


def _gaussian(device: str) -> Model:
    den = GaussianDenoiser(torch.zeros(1, 8, 8), 0.5)
    return Model("gaussian", den, (1, 8, 8), tensor_fingerprint(den.mu, torch.tensor(den.s)), ANALYTIC_METRICS,
                 "exact-draws")


def _mixture(name: str, std: float, per_class: bool) -> Callable[[str], Model]:
    def load(device: str) -> Model:
        den = digits_mixture(std, per_class=per_class)
        return Model(name, den, den.shape, tensor_fingerprint(den.weights, den.means, den.stds), ANALYTIC_METRICS,
                     "exact-draws")

    return load


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a network's state dict (names and float64 values)."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().to(torch.float64).numpy().tobytes())
    return h.hexdigest()


def _diffusers(path: str | Path, name: str, device: str) -> Model:
    folder = Path(path) if Path(path).is_dir() else None
    flow = folder is not None and is_flow_folder(folder)
    if folder is not None and (not flow or (folder / "unet").is_dir()):
        check_unet_config(folder)
    if folder is not None:
        check_model_folder(folder)
    if flow:  # a flow-matching pipeline (FlowMatchEulerDiscreteScheduler): transformer or UNet
        den, net, shape = load_flow_pipeline(str(path), device=device)
        return Model(name, den, shape, module_fingerprint(net), folder=folder)
    try:
        den = VPDenoiser.from_pretrained(str(path), device=device)
    except TypeError as err:
        raise ValueError(f"could not build the model in {path} ({err}); check its unet/config.json") from None
    size = den.model.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return Model(name, den, (den.model.config.in_channels, *size), module_fingerprint(den.model), folder=folder)


MODELS: dict[str, Callable[[str], Model]] = {
    "gaussian": _gaussian,
    "mixture-smooth": _mixture("mixture-smooth", 0.35, per_class=True),
    "mixture-digits": _mixture("mixture-digits", 0.1, per_class=False),
    "digits-ddpm": lambda device: replace(_diffusers(EMBEDDED_MODEL_DIR, "digits-ddpm", device),
                                          metrics=("fd-digits",), reference="sklearn-digits",
                                          guard_features="digits-guard"),
    "digits-flow": lambda device: replace(_diffusers(FLOW_MODEL_DIR, "digits-flow", device),
                                          metrics=("fd-digits",), reference="sklearn-digits",
                                          guard_features="digits-guard"),
}


def load_model(name: str, *, device: str = "cpu") -> Model:
    """A registered model by name, or a diffusers pipeline folder (``VPDenoiser``; ``FlowDenoiser`` for a
    flow-matching scheduler) / hub id (``VPDenoiser``)."""
    check_model_name(name)
    return MODELS[name](device) if name in MODELS else _diffusers(name, name, device)


def check_model_name(name: str) -> None:
    """One ValueError unless ``name`` is a registered model, an existing folder, or a hub id ("org/name")."""
    if name in MODELS or Path(name).is_dir():
        return
    if name.startswith((".", "/", "~")) or Path(name).exists():
        raise ValueError(f"no diffusers pipeline folder at {name}; pass a folder written by save_pretrained")
    if "/" not in name:
        raise ValueError(
            f"unknown model {name!r}; choose one of {sorted(MODELS)}, a diffusers pipeline folder, or a hub id"
        )


__all__ = [
    "DATA_DIR",
    "EMBEDDED_MODEL_DIR",
    "FLOW_MODEL_DIR",
    "MODELS",
    "EDMDenoiser",
    "FlowDenoiser",
    "FlowSchedule",
    "GaussianDenoiser",
    "MixtureDenoiser",
    "Model",
    "VPDenoiser",
    "check_model_name",
    "check_unet_config",
    "digits_mixture",
    "load_model",
    "module_fingerprint",
    "tensor_fingerprint",
]
