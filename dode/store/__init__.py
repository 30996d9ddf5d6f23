"""Storage: the Parquet trajectory format and the content-addressed artifact registry."""

from .lambdas import LAMBDAS_FILE, load_lambdas, save_lambdas
from .registry import KINDS, Artifact, Registry
from .trajectory import (
    SCHEMA_VERSION,
    Trajectory,
    TrajectoryFile,
    TrajectoryWriter,
    read_meta,
    read_step,
    read_steps,
    write_teacher,
)

__all__ = [
    "KINDS",
    "LAMBDAS_FILE",
    "SCHEMA_VERSION",
    "Artifact",
    "Registry",
    "Trajectory",
    "TrajectoryFile",
    "TrajectoryWriter",
    "load_lambdas",
    "read_meta",
    "read_step",
    "read_steps",
    "save_lambdas",
    "write_teacher",
]
