"""Storage: the Parquet trajectory format and the content-addressed artifact registry."""

from .lambdas import LAMBDAS_FILE, load_lambdas, save_lambdas
from .location import registry_location
from .manifest import KINDS, Artifact
from .registry import Registry
from .storage import FsspecStorage, LocalStorage, Storage
from .trajectory import (
    SCHEMA_VERSION,
    Trajectory,
    TrajectoryFile,
    TrajectoryWriter,
    read_artifact,
    read_meta,
    read_step,
    read_steps,
)

__all__ = [
    "KINDS",
    "LAMBDAS_FILE",
    "SCHEMA_VERSION",
    "Artifact",
    "FsspecStorage",
    "LocalStorage",
    "Registry",
    "Storage",
    "Trajectory",
    "TrajectoryFile",
    "TrajectoryWriter",
    "load_lambdas",
    "read_artifact",
    "read_meta",
    "read_step",
    "read_steps",
    "registry_location",
    "save_lambdas",
]
