"""Every normalizer, one file per family, each registered under a short key.

Importing this package registers all of them.
"""

# identity, affine, poly, hm, histmatch, reinhard, macenko, ccgan, pcnet; distill: lut3d, pixelnet, ctx
# (fast students of any method)
from . import ccgan, distill, histmatch, hm, pcnet, poly, simple, stain  # noqa: F401
from .base import NORMALIZERS, Normalizer, create_normalizer, load_normalizer, register_normalizer

__all__ = ["NORMALIZERS", "Normalizer", "create_normalizer", "load_normalizer", "register_normalizer"]
