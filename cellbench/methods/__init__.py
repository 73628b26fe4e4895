"""Every normalizer, one file per family, each registered under a short key.

Importing this package registers all of them.
"""

from .base import NORMALIZERS, Normalizer, create_normalizer, load_normalizer, register_normalizer
from . import simple  # noqa: F401  (identity, affine)

__all__ = ["NORMALIZERS", "Normalizer", "create_normalizer", "load_normalizer", "register_normalizer"]
