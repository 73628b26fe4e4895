"""Turn a ``--data`` spec of data on disk into in-memory training data.

The embedded simulated data (``--data synthetic``) comes from the simulator, a layer above this
one: :func:`cellbench.sim.load_training_data` serves every kind and hands the on-disk ones to
:func:`load_folder_data`.
"""

from __future__ import annotations

import logging

from ..errors import ConfigError
from .folders import PairedFolder
from .sets import PairedSet, UnpairedSet
from .spec import DataSpec, parse_data_spec

log = logging.getLogger(__name__)


def load_folder_data(spec: str | DataSpec, *, size: int = 256, seed: int = 0, split: str = "train",
                     kinds: tuple[str, ...] = ("paired",)) -> PairedSet | UnpairedSet:
    """Load the ``split`` of a dataset on disk for fitting a normalizer whose data kinds are ``kinds``."""
    s = parse_data_spec(spec) if isinstance(spec, str) else spec
    if s.kind == "paired":
        return PairedFolder(s.path, seed=seed).load(split, size=size)
    if s.kind == "synthetic":
        raise ConfigError(f"--data {s}: simulated data comes from the simulator; use "
                          "cellbench.sim.load_training_data (what `cellbench fit` does)")
    if s.kind == "resim":
        raise ConfigError("fit on resim data: first run `cellbench simulate resim --real DIR --out ROOT`, "
                          "then `cellbench fit METHOD --data ROOT`")
    if s.kind == "cross":
        if "unpaired" not in kinds:
            raise ConfigError(f"--data {s}: this method needs registered pairs; cross-system data has none")
        from .cross import load_cross

        return load_cross(s.options["x"], s.options["y"], size=size, seed=seed).train
    if s.kind == "labelled":
        raise ConfigError(f"--data {s}: a single labelled folder has one system only; a normalizer needs "
                          "X and Y: use paired:ROOT or cross:x=DIR,y=DIR")
    raise ConfigError(f"unsupported data kind {s.kind!r}")


__all__ = ["load_folder_data"]
