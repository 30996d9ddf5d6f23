"""Feature extractors for Fréchet distances, by name: ``inception`` (FID), ``digits`` (FD-digits), ``pixels``.

Every extractor maps uint8 images (B, C, H, W) to float64 features (B, D) and carries
``name`` (which features), ``label`` (how the distance is reported: only Inception gives "FID") and
``fingerprint`` (the weights' sha256: statistics with different fingerprints are not comparable).

``inception`` is pytorch-fid's ``InceptionV3`` itself, fed as ``pytorch_fid.fid_score.get_activations``
feeds it: RGB float32 in [0, 1] (the model resizes to 299 x 299 bilinearly and rescales to [-1, 1]),
spatial average pooling below pool3, float32 forward, float64 features. Its weights are read from
the local file pytorch-fid caches (``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``)
or from an explicit path, never downloaded.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from dode.common.devices import resolve_device
from dode.common.images import to_gray, to_model, to_rgb, to_unit
from dode.metrics import digits
from dode.metrics.fid import FeatureExtractor

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # basename of pytorch_fid.inception.FID_WEIGHTS_URL
INCEPTION_DIMS = (64, 192, 768, 2048)  # pytorch_fid.inception.InceptionV3.BLOCK_INDEX_BY_DIM


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def inception_weights_path(path: str | Path | None = None) -> Path:
    """The local FID Inception weights: ``path``, or where pytorch-fid caches them (``torch.hub.get_dir()``)."""
    target = Path(path) if path is not None else Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE
    if not target.is_file():
        raise FileNotFoundError(
            f"FID Inception weights not found at {target}. Download "
            f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE} "
            f"on a machine with network access and put it at {target} (or set TORCH_HOME to a folder holding "
            f"hub/checkpoints/{FID_WEIGHTS_FILE}, or pass --inception-weights PATH)"
        )
    return target


def build_inception(dims: int = 2048, weights: str | Path | None = None) -> torch.nn.Module:
    """pytorch-fid's ``InceptionV3`` for ``dims``-d features, its state dict loaded from the local file only."""
    if dims not in INCEPTION_DIMS:
        raise ValueError(f"Inception features have dims in {list(INCEPTION_DIMS)}, got {dims}")
    path = inception_weights_path(weights)
    from pytorch_fid import inception

    def local_state_dict(url: str, **_: object) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)

    try:
        with mock.patch.object(inception, "load_state_dict_from_url", local_state_dict):
            model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as err:
        raise ValueError(
            f"{path} does not hold the FID Inception weights (torch could not load it: {type(err).__name__}); download "
            f"{FID_WEIGHTS_FILE} again (see pytorch-fid's releases)"
        ) from None
    return model.eval()


def write_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised state dict of the FID Inception architecture (pytorch-fid's own classes).

    For offline tests and benchmarks: features are meaningless, but shapes, code paths and pytorch-fid
    parity are the real ones. ``fid_inception_v3`` is run with its download replaced by the network's
    own state dict; convolutions get He-normal weights so that features have unit scale.
    """
    from pytorch_fid import inception

    built: list[torch.nn.Module] = []
    make = inception._inception_v3

    def capture(*args: object, **kwargs: object) -> torch.nn.Module:
        built.append(make(*args, **kwargs))
        return built[-1]

    with torch.random.fork_rng(), mock.patch.object(inception, "_inception_v3", capture), mock.patch.object(
        inception, "load_state_dict_from_url", lambda url, **_: built[-1].state_dict()
    ):
        torch.manual_seed(seed)
        net = inception.fid_inception_v3()
        for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # unit-scale activations at every depth
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


@lru_cache(maxsize=4)
def _loaded_inception(path: str, mtime_ns: int, size: int, dims: int, device: str) -> tuple[torch.nn.Module, str]:
    """The network and its weights' sha256, built once per process per weights file (and version of it)."""
    return build_inception(dims, path).to(device), file_sha256(Path(path))


class InceptionFeatures:
    """pool3 (2048-d) or an earlier block's spatially averaged features of pytorch-fid's InceptionV3."""

    label = "FID"

    def __init__(self, dims: int = 2048, device: str | torch.device | None = None, weights: str | Path | None = None):
        path = inception_weights_path(weights).resolve()
        self.name, self.dims, self.device = f"inception-{dims}", dims, resolve_device(device)
        stat = path.stat()
        self.model, self.fingerprint = _loaded_inception(str(path), stat.st_mtime_ns, stat.st_size, dims, str(self.device))

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        pred = self.model(to_rgb(to_unit(images)).to(self.device))[0]
        if pred.shape[2] != 1 or pred.shape[3] != 1:
            pred = torch.nn.functional.adaptive_avg_pool2d(pred, output_size=(1, 1))
        return pred.squeeze(3).squeeze(2).cpu().numpy().astype(np.float64)


class DigitsFeatures:
    """Penultimate features of the shipped 8x8 digits classifier (``dode.metrics.digits``) -> FD-digits."""

    name, label = "digits", "FD-digits"

    def __init__(self, device: str | torch.device | None = None, weights: str | Path | None = None):
        folder = Path(weights) if weights is not None else digits.CLASSIFIER_DIR
        self.classifier = digits.load_digits_classifier(folder, device=str(resolve_device(device)))
        self.fingerprint = file_sha256(folder / "model.safetensors")
        self._features = digits.digits_features

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._features(to_model(to_gray(images)), self.classifier).numpy()


class PixelFeatures:
    """Raw pixels in [0, 1], flattened (C * H * W features) -> FD-pixels."""

    name, label, fingerprint = "pixels", "FD-pixels", ""

    def __init__(self, device: str | torch.device | None = None, weights: str | Path | None = None):
        if weights is not None:
            raise ValueError("pixel features have no weights; drop the weights argument")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return to_unit(images, torch.float64).reshape(len(images), -1).numpy()


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "inception": InceptionFeatures,
    "digits": DigitsFeatures,
    "pixels": PixelFeatures,
}


def get_extractor(
    name: str = "inception", *, dims: int = 2048, device: str | torch.device | None = None,
    weights: str | Path | None = None,
) -> FeatureExtractor:
    """The extractor ``name`` (``dims`` applies to Inception only; ``weights`` overrides the default file)."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {list(EXTRACTORS)}")
    if name == "inception":
        return InceptionFeatures(dims, device, weights)
    return EXTRACTORS[name](device, weights)


class Counted:
    """An extractor that counts the images it is fed on a progress bar (``dode.common.progress.bar``); every other
    attribute (name, label, fingerprint, dims) is the wrapped extractor's."""

    def __init__(self, extractor: FeatureExtractor, bar: object) -> None:
        self.extractor, self.bar = extractor, bar

    def __getattr__(self, name: str) -> object:
        return getattr(self.extractor, name)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = self.extractor(images)
        self.bar.update(len(images))
        return out
