"""``dode run STAGE``: run the Prefect flows locally (pipeline, teacher, distill, sample, score).

The flows live in the ``flows`` package, the only one that imports Prefect; this module and
``flows.cli`` do not, so ``import dode`` and ``dode --help`` stay Prefect-free (Prefect is imported
when a stage runs). A run uses Prefect's ephemeral local server: no set-up, no server to start.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from flows import cli

    p = sub.add_parser(
        name, help="run a Prefect flow locally: pipeline, teacher, distill, sample or score",
        description="Run a D-ODE flow on Prefect's ephemeral local server (no set-up). The options are the "
        "flow's parameters, as in prefect.yaml's deployments; options left out take the flow's defaults.",
    )
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    cli.add_arguments(stages)
    p.set_defaults(func=cli.main)
