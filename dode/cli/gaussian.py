"""``dode gaussian``: fit the analytic first step's Gaussian to a model's samples or to data, and register it."""

from __future__ import annotations

import argparse
from pathlib import Path

from dode.cli.options import add_config_options, config_mapping


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from dode.distillation.first_step import GaussianRun

    p = sub.add_parser(
        name, help="fit a Gaussian of a model's distribution (the analytic first step's) and register it",
        description="Fits mean and covariance (top-k eigenpairs plus an isotropic rest above 4,096 dimensions) to "
        "the model's own many-step samples, or to data, and registers it as a 'gaussian' artifact with lineage to "
        "the model. The options are its configuration (dode.distillation.first_step.GaussianRun). Prints its id: "
        "pass it as `dode sample --first-step analytic --gaussian ID` or to the flows.")
    add_config_options(p, GaussianRun)
    p.add_argument("--registry", default=None, metavar="URI", help="registry path or URL (default $DODE_REGISTRY)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dode.common import progress
    from dode.common.config import build
    from dode.common.images import to_model
    from dode.distillation.first_step import GaussianRun, from_data, from_model, model_gaussian_key
    from dode.models import load_model
    from dode.store.gaussians import save_gaussian
    from dode.store.location import registry_location
    from dode.store.registry import Registry

    config = build(GaussianRun, config_mapping(args, GaussianRun))
    registry = Registry(registry_location(args.registry))
    registry.check_writable()
    model = load_model(config.model)
    if config.data is None:
        with progress.bars():  # a bar on a terminal, a line per 5 % in a log
            gauss = from_model(model, config)
        key = model_gaussian_key(model.name, config)
    else:
        images, source = data_images(model, config.data)
        gauss = from_data(to_model(images), model, rank=config.rank, source={"data": source})
        key = f"{model.name}/gaussian/data-{source}"
    parents = [a.id for a in registry.find("model", fingerprint=model.fingerprint)[:1]]
    art = save_gaussian(registry, gauss, key, parents, {"model": model.name, **gauss.source})
    print(art.id)
    return 0


def data_images(model, path: str):
    """uint8 images (N, C, H, W) and a name for their source: the model's reference data or a .npy file."""
    import numpy as np

    if path == "reference":
        from dode.metrics.reference import reference_images

        return reference_images(model, 0, 0)
    file = Path(path)
    if file.suffix != ".npy" or not file.is_file():
        raise ValueError(f"--data {path}: pass a .npy file of uint8 images (N, C, H, W) or 'reference'")
    images = np.load(file, allow_pickle=False, mmap_mode="r")
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"--data {path}: expected uint8 images (N, C, H, W), got {images.dtype} {images.shape}")
    return np.ascontiguousarray(images), file.stem
