"""``dode distill-pipeline``: fit D-ODE lambdas for a text-to-image diffusers pipeline and ship them.

The lambdas are registered (kind "lambdas", via dode.store.lambdas) and, with ``--out``, written as a
DODEScheduler folder (``DODEScheduler.from_pretrained(DIR)``, or ``pipe.scheduler = ...``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dode.cli.options import add_config_options, config_mapping
from dode.common import progress


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    from dode.integrations.diffusers.distill import PipelineDistillConfig

    p = subparsers.add_parser(
        name,
        help="fit D-ODE lambdas for a text-to-image diffusers pipeline (classifier-free guidance included)",
        description="Distil one lambda per network evaluation for a Stable Diffusion (1.x/2.x, SDXL, SD3) or FLUX "
        "pipeline over a file of prompts; register them and/or write a DODEScheduler folder, which also "
        "serves the img2img and inpainting pipelines on the same components. The options are its configuration "
        "(dode.integrations.diffusers.distill.PipelineDistillConfig).",
    )
    p.add_argument(
        "model", metavar="PATH_OR_ID", help="diffusers pipeline folder (save_pretrained) or hub id"
    )
    p.add_argument(
        "--prompts", type=Path, required=True, metavar="FILE", help="text file, one prompt per line"
    )
    add_config_options(p, PipelineDistillConfig)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument(
        "--registry", default=None, metavar="URI", help="registry (default: $DODE_REGISTRY or ./dode-registry)"
    )
    p.add_argument("--no-register", action="store_true", help="do not register the lambdas (needs --out)")
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="write the DODEScheduler folder here"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars (teacher, distillation)")
    p.set_defaults(func=run)


def read_prompts(path: Path) -> list[str]:
    """Non-empty lines of ``path``, stripped."""
    if not path.is_file():
        raise ValueError(f"prompts file {str(path)!r} not found; pass a text file with one prompt per line")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {str(path)!r} has no prompts; write one prompt per line")
    return prompts


def run(args: argparse.Namespace) -> int:
    from dode.common.config import build
    from dode.integrations.diffusers.distill import (
        PipelineDistillConfig,
        distill_pipeline,
        load_pipeline,
        register_pipeline_lambdas,
    )
    from dode.integrations.diffusers.scheduler import DODEScheduler
    from dode.store.location import registry_location
    from dode.store.registry import Registry

    if args.no_register and args.out is None:
        raise ValueError("--no-register without --out would throw the lambdas away; pass --out DIR")
    config = build(PipelineDistillConfig, config_mapping(args, PipelineDistillConfig))
    prompts = read_prompts(args.prompts)
    registry = None if args.no_register else Registry(registry_location(args.registry))
    if registry is not None:
        registry.check_writable()  # fail before the distillation, not after
    pipe = load_pipeline(args.model, args.device)

    # Distil on the pipeline's own guided denoiser.
    with progress.bars(not args.quiet):
        lam = distill_pipeline(pipe, prompts, config)
    print(f"lambdas ({lam.solver}, {lam.nfe} evaluations): {', '.join(f'{v:+.4f}' for v in lam.values)}")
    print(guard_line(lam.guard))

    # Ship: registry artifact and/or scheduler folder.
    artifact_id = None
    if registry is not None:
        art = register_pipeline_lambdas(registry, args.model, config, prompts, pipe, lam)
        artifact_id = art.id
        print(f"registered lambdas {art.id}")
    if args.out is not None:
        DODEScheduler.from_scheduler(pipe.scheduler, lambdas=lam, artifact_id=artifact_id).save_pretrained(
            args.out
        )
        print(f"scheduler written to {args.out} (load with DODEScheduler.from_pretrained)")
    return 0


def guard_line(guard: dict | None) -> str:
    """What the held-out guard did (``Lambdas.guard``, dode.distillation.guard): the candidate kept and every candidate's
    held-out error to the teacher (and Frechet distance with the fd criterion); "guard: off" when it did not run."""
    if not guard:
        return "guard: off"
    scores = ", ".join(f"{name} {value:.4g}" for name, value in guard["mse"].items())
    fd = ", ".join(f"{name} {value:.4g}" for name, value in guard.get("fd", {}).items())
    kept = f"kept {guard['chosen']}" + (" (not the fit: not clearly better)" if guard.get("changed") else "")
    return (f"guard: {kept}; held-out mse on {guard['split']['guard']} samples: {scores}"
            + (f"; Frechet distance: {fd}" if fd else ""))
