"""Datasets: formats on disk, splits, in-memory sets, validation."""

from .classes import CLASSES, MAIN_WBC, canonical_class
from .folders import LabelledFolder, PairedFolder, index_labelled, index_paired, is_paired_root
from .sets import LabelledSet, PairedSet, UnpairedSet, as_unpaired

__all__ = [
    "CLASSES", "MAIN_WBC", "canonical_class", "LabelledFolder", "PairedFolder", "index_labelled",
    "index_paired", "is_paired_root", "LabelledSet", "PairedSet", "UnpairedSet", "as_unpaired",
]
