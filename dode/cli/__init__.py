"""The ``dode`` command line: one sub-command module per area, registered explicitly below, plus the
commands other installed packages register in the ``dode.commands`` entry-point group (``dode run``,
from the ``flows`` package: the library never imports the orchestration layer)."""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import EntryPoint, distributions

from dode.store.manifest import printable
from dode.version import __version__

COMMANDS: dict[str, str] = {
    "artifacts": "dode.cli.artifacts",  # list / show / get / verify registry artifacts
    "sample": "dode.cli.scoring",  # large-batch sharded sampling
    "fid": "dode.cli.scoring",  # FID exactly as pytorch-fid, FD on other extractors
    "gaussian": "dode.cli.gaussian",  # the analytic first step's Gaussian of a model
    "train-model": "dode.cli.train",  # (re)train the embedded digits model and classifier
    "distill-pipeline": "dode.cli.pipeline",  # fit lambdas for a diffusers pipeline
}
ENTRY_POINTS = "dode.commands"  # name -> add_parser(sub, name) of another package, e.g. run = dode_flows.cli:add_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dode", description="Distilled-ODE solvers for diffusion models.")
    parser.add_argument("--version", action="version", version=f"dode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub, name)
    for name, ep in sorted(plugin_commands().items()):
        if name not in COMMANDS:  # the library's own commands keep their names
            ep.load()(sub, name)
    return parser


def plugin_commands() -> dict[str, EntryPoint]:
    """The ``dode.commands`` entry points of every installed distribution, the first of a name winning (read
    from all metadata: a stale ``dode.egg-info`` in the working directory does not hide the installed one)."""
    found: dict[str, EntryPoint] = {}
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINTS:
                found.setdefault(ep.name, ep)
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, FloatingPointError) as err:  # bad input, file-system trouble, a model's NaN
        return error(args.command, str(err))
    except MemoryError as err:  # an allocation this machine cannot hold (sizes read from files are refused earlier)
        return error(args.command, f"not enough memory ({err or 'an allocation failed'}); ask for less at once: a "
                                   "smaller --batch-size, fewer samples, or a machine with more memory")
    except RuntimeError as err:  # torch's out-of-memory on an accelerator is one; any other is a bug: its traceback
        if type(err).__name__ != "OutOfMemoryError":
            raise
        return error(args.command, f"the device ran out of memory ({str(err).splitlines()[0]}); use a smaller "
                                   "--batch-size")
    except KeyboardInterrupt:
        print(f"dode {args.command}: interrupted", file=sys.stderr)
        return 130


def error(command: str, message: str) -> int:
    """Print one escaped error line for ``command`` on stderr; the exit status 2 of expected failures."""
    print(f"dode {command}: error: {printable(message)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
