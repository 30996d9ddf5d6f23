"""Training the embedded models (``dode train-model``): the digits DDPM, its flow-matching twin and the
FD-digits classifier (``digits``).

May import: ``dode.common``, ``dode.core``, ``dode.models``, ``dode.metrics``.
"""

from dode.common.lazy import lazy_face

__getattr__, __dir__ = lazy_face(__name__, {
    "train_digits_model": ".digits", "train_digits_classifier": ".digits", "evaluate_digits_model": ".digits",
    "sample_digits": ".digits", "save_grid": ".digits",
})
