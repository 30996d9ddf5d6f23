"""``dode train-model``: (re)train the embedded digits DDPM, the flow-matching twin and the FD-digits
classifier, then score the models.

The committed models were written by ``dode train-model --grid-dir docs`` (seed 0, one CPU thread;
digits-flow by ``dode train-model --only flow``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dode.core.rng import MAX_SEED
from dode.models import DATA_DIR

ONLY = ("model", "flow", "classifier")  # model: digits-ddpm; flow: digits-flow
MODEL_FOLDERS = {"model": "digits-ddpm", "flow": "digits-flow"}
OBJECTIVES = {"model": "epsilon", "flow": "flow"}  # dode.training.digits.TRAINING_OBJECTIVES


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="(re)train the embedded digits DDPM, the flow-matching digits model and the FD-digits classifier",
        description="Trains on scikit-learn's bundled 8x8 digits, seeded and deterministic on CPU. Writes "
        "OUT/digits-ddpm (a diffusers DDPMPipeline folder), OUT/digits-flow (the same UNet trained for flow "
        "matching, with a FlowMatchEulerDiscreteScheduler) and OUT/digits-classifier, then prints the "
        "classifier's held-out accuracy and the FD-digits of many-step samples of each model vs the data.",
    )
    p.add_argument(
        "--only", choices=ONLY, default=None,
        help="train only the DDPM (model), only the flow-matching model (flow) or only the classifier",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DATA_DIR / "models",
        metavar="DIR",
        help="parent folder of digits-ddpm/, digits-flow/ and digits-classifier/ (default: %(default)s)",
    )
    p.add_argument("--steps", type=int, default=4000, help="model optimiser steps (default: %(default)s)")
    p.add_argument(
        "--classifier-steps", type=int, default=2000, help="classifier optimiser steps (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="training and sampling seed (default: %(default)s)")
    p.add_argument(
        "--samples",
        type=int,
        default=900,
        help="model samples scored by FD-digits against half "
        "the digits (899 images), 0 to skip scoring (default: %(default)s)",
    )
    p.add_argument(
        "--sample-steps", type=int, default=100, help="Euler (DDIM) steps per sample (default: %(default)s)"
    )
    p.add_argument(
        "--score-only",
        action="store_true",
        help="train nothing: score the models in OUT (by default the shipped ones) as after training",
    )
    p.add_argument(
        "--grid-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write DIR/digits-samples.png and DIR/digits-real.png (8x8 grids)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 is fastest on shared cores and "
        "keeps the run reproducible (default: %(default)s)",
    )
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """One ValueError for any bad argument, before any training: counts, seed, and the output folders."""
    for flag in ("steps", "classifier_steps", "sample_steps", "threads"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.samples < 0 or (args.grid_dir and args.samples < 64):
        raise ValueError(f"--samples must be >= 0 (>= 64 with --grid-dir), got {args.samples}")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must be in [0, 2**63 - 1], got {args.seed}")
    for flag, folder in (("--out", args.out), ("--grid-dir", args.grid_dir)):
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"{flag} {folder}: cannot create this folder ({err.strerror}); pass a writable folder") from None
        if not os.access(folder, os.W_OK):
            raise ValueError(f"{flag} {folder} is not writable; pass a writable folder")


def run(args: argparse.Namespace) -> int:
    import torch

    from dode.metrics.digits import load_digits_classifier, load_digits_images
    from dode.models import load_model
    from dode.training.digits import (
        evaluate_digits_model,
        save_grid,
        train_digits_classifier,
        train_digits_model,
    )

    _check_args(args)
    torch.set_num_threads(args.threads)
    classifier_dir = args.out / "digits-classifier"
    models = [args.only] if args.only in MODEL_FOLDERS else [] if args.only else list(MODEL_FOLDERS)

    if args.only in (None, "classifier") and not args.score_only:
        stats = train_digits_classifier(classifier_dir, steps=args.classifier_steps, seed=args.seed)
        print(
            f"classifier: {stats['params']:,} parameters, held-out accuracy {stats['accuracy']:.4f} "
            f"({stats['seconds']:.0f} s) -> {classifier_dir}"
        )
    for which in [] if args.score_only else models:
        folder = args.out / MODEL_FOLDERS[which]
        stats = train_digits_model(folder, objective=OBJECTIVES[which], steps=args.steps, seed=args.seed)
        print(
            f"{MODEL_FOLDERS[which]}: {stats['params']:,} parameters, final loss {stats['final_loss']:.4f} "
            f"({stats['seconds']:.0f} s) -> {folder}"
        )
    if args.samples == 0:
        return 0

    # Score many-step samples; models not trained in OUT are the shipped ones.
    classifier = load_digits_classifier(classifier_dir if classifier_dir.is_dir() else None)
    for which in models or ["model"]:
        name = MODEL_FOLDERS[which]
        folder = args.out / name
        model = load_model(str(folder) if folder.is_dir() else name)
        fd = evaluate_digits_model(model.denoiser, classifier, args.samples, steps=args.sample_steps, seed=args.seed)
        print(
            f"{name} FD-digits vs half the data: {args.samples} samples ({args.sample_steps} Euler steps) "
            f"{fd['fd_model']:.2f}; "
            f"yardsticks: the other half {fd['fd_data_halves']:.2f}, uniform noise {fd['fd_noise']:.2f}"
        )
        if args.grid_dir:
            stem = "digits" if which == "model" else name
            images, _ = load_digits_images()
            real = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:64]]
            grids = [(f"{stem}-samples.png", fd["samples"][:64])] + ([("digits-real.png", real)] if which == "model" else [])
            for file, grid in grids:
                print(f"wrote {save_grid(grid, args.grid_dir / file)}")
    return 0
