"""dode's version: a leaf module, so that what records it (manifests, trajectories) loads nothing else."""

__version__ = "0.1.0"
