"""The guard's feature maps for digits models: a second, independent digits classifier.

The held-out guard (``dode.distillation.guard``) ranks candidate fits by the Frechet distance of their samples to the
teacher's, ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) (Dowson & Landau, 1982), in the features a
model declares (``dode.models.Model.guard_features``; None: pixels). FD-digits, the product's metric, measures
in the penultimate features of the evaluation classifier (``dode.metrics.digits``); the guard must not see
that network, or the metric would leak into the choice it judges. So the guard's classifier differs in
architecture (a 5x5 convolution, average pooling, GELU, 32 features), seed and data split; it is trained
here, seeded and single-threaded on the CPU, and read like the evaluation classifier sees samples: quantised
to uint8 (``dode.common.images.to_uint8``) as the pipeline stores them.

On-disk format (owned here): ``<dir>/config.json`` (schema_version, architecture, training settings,
held-out accuracy) + ``<dir>/model.safetensors``. Rebuild with
``python -m dode.metrics.guard_features --out data/models/digits-guard-features``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from dode.common.images import to_model, to_uint8
from dode.common.packaged import MODELS_DIR
from dode.core.types import Tensor
from dode.metrics.classifier import check_counts, deterministic, fit_classifier
from dode.metrics.digits import (
    IMAGE_SHAPE,
    classifier_accuracy,
    digits_split,
    load_digits_images,
    read_classifier,
)

GUARD_FEATURES_DIR = MODELS_DIR / "digits-guard-features"
SCHEMA_VERSION = 1
TRAINING = {"steps": 1500, "batch": 128, "lr": 3e-3, "weight_decay": 1e-4, "seed": 7, "split_seed": 7,
            "test_fraction": 0.25}


class GuardClassifier(nn.Module):
    """5x5 conv (8x8, ``width`` channels), GELU, 2x2 average pool (4x4), 3x3 conv (2 ``width``), GELU,
    a ``feature_dim`` linear layer (the features: pre-activations), GELU, then 10 logits."""

    def __init__(self, width: int = 16, feature_dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim, "classes": classes}
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2),
            nn.GELU(),
            nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim),
        )
        self.head = nn.Sequential(nn.GELU(), nn.Linear(feature_dim, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class GuardFeatures:
    """The guard's feature map: samples (n, 1, 8, 8) in model space -> float64 (n, feature_dim), the
    classifier's penultimate pre-activations of the samples quantised to uint8. ``name`` goes in the guard's
    report."""

    def __init__(self, model: GuardClassifier, name: str) -> None:
        self.model, self.name = model, name

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != IMAGE_SHAPE:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"the {self.name} guard features need samples of shape (n, 1, 8, 8), got {shape}")
        return self.model.body(to_model(to_uint8(x)).to(torch.float32)).to(torch.float64)


def train_guard_features(out: str | Path | None = None, **settings: float) -> tuple[GuardClassifier, dict]:
    """Train the guard's classifier on its training split (``TRAINING``, overridden by ``settings``), one
    CPU thread, deterministic; save it at ``out`` if given. Returns the model and its config."""
    opts = {**TRAINING, **settings}
    check_counts("train_guard_features", steps=opts["steps"], batch=opts["batch"])
    images, labels = load_digits_images()
    train, test = digits_split(len(images), opts["test_fraction"], opts["split_seed"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with deterministic(opts["seed"]) as gen:
            model = GuardClassifier()
            fit_classifier(model, images, labels, train, gen, steps=opts["steps"], batch=opts["batch"], lr=opts["lr"],
                           weight_decay=opts["weight_decay"], warmup=opts["steps"] // 10)
    finally:
        torch.set_num_threads(threads)
    model.eval().requires_grad_(False)
    config = {"schema_version": SCHEMA_VERSION, **model.config, "training": opts,
              "test_accuracy": classifier_accuracy(model, images[test], labels[test])}
    if out is not None:
        save_guard_classifier(model, config, out)
    return model, config


def save_guard_classifier(model: GuardClassifier, config: dict, out: str | Path) -> Path:
    """Write ``model.safetensors`` + ``config.json``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_guard_classifier(path: str | Path | None = None) -> GuardClassifier:
    """The shipped guard classifier (``data/models/digits-guard-features``) or one saved at ``path``."""
    path = Path(path) if path is not None else GUARD_FEATURES_DIR
    return read_classifier(path, GuardClassifier, SCHEMA_VERSION, "guard classifier",
                           f"rebuild it with `python -m dode.metrics.guard_features --out {path}`")


@lru_cache(maxsize=1)
def load_guard_features() -> GuardFeatures:
    """The shipped guard feature map for digits models."""
    return GuardFeatures(load_guard_classifier(), "digits-guard")


GUARD_FEATURES: dict[str, Callable[[], GuardFeatures]] = {"digits-guard": load_guard_features}


def guard_features(name: str | None) -> GuardFeatures | None:
    """The feature map a model declares by name (``dode.models.Model.guard_features``); None: pixels."""
    if name is None:
        return None
    if name not in GUARD_FEATURES:
        raise ValueError(f"unknown guard features {name!r}; choose one of {sorted(GUARD_FEATURES)} (or None: pixels)")
    return GUARD_FEATURES[name]()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the guard's digits classifier (deterministic, one thread).")
    parser.add_argument("--out", type=Path, default=GUARD_FEATURES_DIR)
    args = parser.parse_args(argv)
    _, config = train_guard_features(args.out)
    print(f"guard classifier -> {args.out} (held-out accuracy {config['test_accuracy']:.4f})")


if __name__ == "__main__":
    main()
