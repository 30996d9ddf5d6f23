"""Prefect flows around the dode library: teacher -> distill -> sample -> score -> report.

The only package that imports Prefect. Importing ``flows`` sets quiet, library-friendly Prefect
defaults before Prefect itself is imported (an explicit environment setting always wins):
records of the ``dode`` library loggers go to the flow-run logs, logs from outside a run are not
reported as a missing run, and the local (ephemeral) server sends no analytics and gets up to
2 minutes to start on a busy machine (the first start migrates a fresh database).
"""

import logging
import os
from pathlib import Path

PREFECT_YAML = Path(__file__).with_name("prefect.yaml")  # the deployments (in a checkout: a link to ../prefect.yaml)

for _name, _value in {
    "PREFECT_LOGGING_EXTRA_LOGGERS": "dode",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ.setdefault(_name, _value)

logging.getLogger("dode").setLevel(logging.INFO)  # Prefect copies handlers to extra loggers, not levels
