"""Where the files shipped with dode are, in a checkout and in an installed wheel.

The embedded models and the digits classifier live in the checkout's top-level ``data/models``; the wheel carries
the same folder as ``dode/_data/models`` (pyproject.toml maps the package ``dode._data`` to ``data/``).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # dode/
INSTALLED_DATA_DIR = PACKAGE_DIR / "_data"  # in an installed wheel
CHECKOUT_DATA_DIR = PACKAGE_DIR.parent / "data"  # in a checkout (also an editable install)
DATA_DIR = INSTALLED_DATA_DIR if INSTALLED_DATA_DIR.is_dir() else CHECKOUT_DATA_DIR
MODELS_DIR = DATA_DIR / "models"
