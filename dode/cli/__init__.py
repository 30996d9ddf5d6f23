"""The ``dode`` command line: one sub-command module per area, registered explicitly below."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "artifacts": "dode.cli.artifacts",  # list / show / get / verify registry artifacts
    "sample": "dode.cli.scoring",  # large-batch sharded sampling
    "fid": "dode.cli.scoring",  # FID exactly as pytorch-fid, FD on other extractors
    "run": "dode.cli.run",  # run the Prefect flows locally
    "train-model": "dode.cli.train",  # (re)train the embedded digits model and classifier
    "distill-pipeline": "dode.cli.pipeline",  # fit lambdas for a diffusers pipeline
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dode", description="Distilled-ODE solvers for diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        print(f"dode {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
