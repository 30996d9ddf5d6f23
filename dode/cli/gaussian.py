"""``dode gaussian``: fit the analytic first step's Gaussian to a model's samples or to data, and register it."""

from __future__ import annotations

import argparse
from pathlib import Path

from dode.core.grids import FAMILIES
from dode.distillation.first_step import SAMPLES, SOLVER, STEPS


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name, help="fit a Gaussian of a model's distribution (the analytic first step's) and register it",
        description="Fits mean and covariance (top-k eigenpairs plus an isotropic rest above 4,096 dimensions) to "
        "the model's own many-step samples, or to data, and registers it as a 'gaussian' artifact with lineage to "
        "the model. Prints its id: pass it as `dode sample --first-step analytic --gaussian ID` or to the flows.")
    p.add_argument("--model", required=True, help="registered model name or diffusers folder")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="fit to data instead: a .npy of uint8 images (N, C, H, W) or 'reference' for the model's "
                        "built-in reference data (e.g. the bundled digits)")
    p.add_argument("--n", type=int, default=SAMPLES, help="model samples to fit to (default %(default)s)")
    p.add_argument("--steps", type=int, default=STEPS, help="grid steps of the sampler (default %(default)s)")
    p.add_argument("--solver", default=SOLVER, help="sampler of the model samples (default %(default)s)")
    p.add_argument("--grid", default="karras", choices=FAMILIES[:-1], help="grid family (default %(default)s)")
    p.add_argument("--first-seed", type=int, default=0, help="seed of the first model sample (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=500, help="samples per batch (default %(default)s)")
    p.add_argument("--rank", type=int, default=None,
                   help="eigenpairs kept (default: all up to 4,096 dimensions, else 64)")
    p.add_argument("--registry", default=None, metavar="URI", help="registry path or URL (default $DODE_REGISTRY)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dode.common import progress
    from dode.common.images import to_model
    from dode.distillation.first_step import from_data, from_model
    from dode.models import load_model
    from dode.store.gaussians import save_gaussian
    from dode.store.location import registry_location
    from dode.store.registry import Registry

    registry = Registry(registry_location(args.registry))
    registry.check_writable()
    model = load_model(args.model)
    if args.data is None:
        with progress.bars():  # a bar on a terminal, a line per 5 % in a log
            gauss = from_model(model, args.n, steps=args.steps, solver=args.solver, first_seed=args.first_seed,
                               batch_size=args.batch_size, rank=args.rank, family=args.grid)
        key = f"{model.name}/gaussian/model-{args.solver}-{args.grid}{args.steps}-n{args.n}-seed{args.first_seed}"
    else:
        images, source = data_images(model, args.data)
        gauss = from_data(to_model(images), model, rank=args.rank, source={"data": source})
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
