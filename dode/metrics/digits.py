"""The offline metric's feature extractor: a small CNN classifier of scikit-learn's 8x8 digits.

FD-digits is the Fréchet distance (Heusel et al., 2017, eq. 6) between Gaussians fitted to the
classifier's penultimate-layer features, the 8x8 analogue of FID's Inception pool3 features:
FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).
On-disk format (owned here): ``<dir>/config.json`` (schema_version, architecture, data split,
held-out accuracy) + ``<dir>/model.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from dode.common.bounded import load_json
from dode.common.packaged import MODELS_DIR
from dode.core.types import Tensor
from dode.metrics.fid import StreamingMoments, frechet_distance

CLASSIFIER_DIR = MODELS_DIR / "digits-classifier"
SCHEMA_VERSION = 1
IMAGE_SHAPE = (1, 8, 8)
Classifier = TypeVar("Classifier", bound=nn.Module)


def load_digits_images() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits (1797, values 0..16) as float32 (N, 1, 8, 8) in [-1, 1], and labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def digits_split(n: int, test_fraction: float = 0.25, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A fixed train/test split of ``n`` images: (train indices, test indices), from a seeded permutation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = round(n * test_fraction)
    return perm[n_test:].sort().values, perm[:n_test].sort().values


class DigitsClassifier(nn.Module):
    """Three 3x3 conv layers (8x8 -> 4x4 -> 2x2), a ``feature_dim`` hidden layer, ReLU, then 10 logits.

    The features are the hidden layer's pre-activations: every unit varies (a ReLU unit that is dead
    on the data would make the feature covariance singular)."""

    def __init__(self, width: int = 32, feature_dim: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim, "classes": classes}
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 4, feature_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, classes))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (B, feature_dim), before the ReLU, of images (B, 1, 8, 8) in [-1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def save_digits_classifier(model: DigitsClassifier, out: str | Path, **meta: object) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (architecture and ``meta``, e.g. split and accuracy)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    config = {"schema_version": SCHEMA_VERSION, **model.config, **meta}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_digits_classifier(path: str | Path | None = None, *, device: str = "cpu") -> DigitsClassifier:
    """The shipped classifier (``data/models/digits-classifier``) or one saved at ``path``, in eval mode."""
    path = Path(path) if path is not None else CLASSIFIER_DIR
    model = read_classifier(path, DigitsClassifier, SCHEMA_VERSION, "digits classifier",
                            "train one with `dode train-model --only classifier`")
    return model.to(device)


def read_classifier(path: Path, build: Callable[[int, int, int], Classifier], schema_version: int, what: str,
                    retrain: str) -> Classifier:
    """A classifier saved at ``path`` as ``config.json`` (``schema_version``, width, feature_dim, classes)
    + ``model.safetensors``, built by ``build(width, feature_dim, classes)``, in eval mode without
    gradients; one error naming ``what`` and saying ``retrain`` where the files are missing or do not fit."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no {what} at {path} (config.json + model.safetensors); {retrain}")
    config = load_json(path / "config.json")
    version = config.get("schema_version") if isinstance(config, dict) else None
    if version != schema_version:
        raise ValueError(f"{path}: {what} schema_version {version!r}, this dode reads {schema_version}; {retrain}")
    sizes = [config.get(k) for k in ("width", "feature_dim", "classes")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in sizes):
        raise ValueError(f"{path}/config.json: width, feature_dim and classes must be integers in [1, 4096], got {sizes}")
    try:
        model = build(*sizes)
        model.load_state_dict(load_file(str(path / "model.safetensors")))
    except (RuntimeError, OSError, SafetensorError) as err:
        raise ValueError(f"{path}/model.safetensors does not fit its config.json ({str(err)[:200]}); {retrain}") from None
    return model.eval().requires_grad_(False)


@lru_cache(maxsize=1)
def _default_classifier() -> DigitsClassifier:
    return load_digits_classifier()


@torch.no_grad()
def digits_features(images: Tensor, classifier: DigitsClassifier | None = None, batch: int = 1024) -> Tensor:
    """Penultimate features of the (shipped) classifier: images (B, 1, 8, 8) in [-1, 1] -> float64 (B, D)."""
    if not isinstance(images, torch.Tensor) or tuple(images.shape[1:]) != IMAGE_SHAPE:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"digits_features needs a tensor of shape (B, 1, 8, 8) in [-1, 1], got {shape}")
    if batch < 1:
        raise ValueError(f"digits_features needs batch >= 1, got {batch}")
    model = classifier or _default_classifier()
    device = next(model.parameters()).device
    chunks = [model.features(b.to(device, torch.float32)) for b in images.split(batch)]
    return torch.cat(chunks).to("cpu", torch.float64)


def fd_digits(images_a: Tensor, images_b: Tensor, classifier: DigitsClassifier | None = None) -> float:
    """FD-digits between two image sets in [-1, 1], (N, 1, 8, 8), on the classifier's penultimate features,
    through the same streaming statistics and pytorch-fid distance as every other Fréchet distance here."""
    a, b = (StreamingMoments().add(digits_features(x, classifier).numpy()).stats("digits") for x in (images_a, images_b))
    return frechet_distance(a, b)


@torch.no_grad()
def classifier_accuracy(model: DigitsClassifier, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` the classifier labels correctly."""
    return float((model(images).argmax(1) == labels).float().mean())
