"""Every normalizer, one file per family, each registered under a short key.

Importing this package registers all of them.
"""

from .base import NORMALIZERS, Normalizer, create_normalizer, load_normalizer, register_normalizer
from . import simple, poly, hm, histmatch, stain, networks  # noqa: F401  (identity, affine, poly, hm, histmatch, reinhard, macenko, ccgan, pcnet)

__all__ = ["NORMALIZERS", "Normalizer", "create_normalizer", "load_normalizer", "register_normalizer"]
