"""Models as sigma-space denoisers, converted once at the edge: analytic testbeds with exact answers
(``analytic``), diffusers VP models and EDM networks (``vp``), flow-matching models (``flow``), and the registry
that loads any of them by name, folder or hub id (``registry``).

May import: ``dode.common``, ``dode.core``.
"""

from dode.common.lazy import lazy_face

__getattr__, __dir__ = lazy_face(__name__, {
    "DATA_DIR": ".registry",
    "EMBEDDED_MODEL_DIR": ".registry",
    "FLOW_MODEL_DIR": ".registry",
    "MODELS": ".registry",
    "Model": ".registry",
    "check_model_name": ".registry",
    "check_unet_config": ".folders",
    "check_model_folder": ".folders",
    "load_model": ".registry",
    "module_fingerprint": ".registry",
    "tensor_fingerprint": ".registry",
    "ANALYTIC_METRICS": ".registry",
    "EDMDenoiser": ".vp",
    "VPDenoiser": ".vp",
    "FlowDenoiser": ".flow",
    "FlowSchedule": ".flow",
    "GaussianDenoiser": ".analytic",
    "MixtureDenoiser": ".analytic",
    "digits_mixture": ".analytic"
})
