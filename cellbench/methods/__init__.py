"""Every normalizer, one file per family, each registered under a short key.

Importing this package registers all of them.
"""

from . import histmatch, hm, networks, poly, simple, stain  # noqa: F401  (identity, affine, poly, hm, histmatch, reinhard, macenko, ccgan, pcnet)
from .base import NORMALIZERS, Normalizer, create_normalizer, load_normalizer, register_normalizer

__all__ = ["NORMALIZERS", "Normalizer", "create_normalizer", "load_normalizer", "register_normalizer"]
