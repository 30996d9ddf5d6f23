"""Storage: the on-disk formats (each owned by one module with its schema version: ``trajectory`` Parquet,
``lambdas``, ``samples``, ``gaussians``) and the content-addressed artifact registry (``registry``, with
``storage``, ``manifest``, ``lookup``, ``reads``, ``fetch``, ``verify``, ``export``).

Sits below compute: imports ``dode.common``, ``dode.version`` and the data types of ``dode.core``
(``Lambdas``, ``Gaussian``) only -- never a solver, sampler, teacher, objective or model.
"""

from dode.common.lazy import lazy_face

__getattr__, __dir__ = lazy_face(__name__, {
    "LAMBDAS_FILE": ".lambdas",
    "load_lambdas": ".lambdas",
    "save_lambdas": ".lambdas",
    "registry_location": ".location",
    "KINDS": ".manifest",
    "Artifact": ".manifest",
    "Registry": ".registry",
    "FsspecStorage": ".storage",
    "LocalStorage": ".storage",
    "Storage": ".storage",
    "SCHEMA_VERSION": ".trajectory",
    "Trajectory": ".trajectory",
    "TrajectoryFile": ".trajectory",
    "TrajectoryWriter": ".trajectory",
    "read_artifact": ".trajectory",
    "read_meta": ".trajectory",
    "read_step": ".trajectory",
    "read_steps": ".trajectory"
})
