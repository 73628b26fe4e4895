"""Turn a ``--data`` spec into in-memory training or evaluation data."""

from __future__ import annotations

import logging

from ..errors import ConfigError
from .folders import LabelledFolder, PairedFolder
from .sets import PairedSet, UnpairedSet
from .spec import DataSpec, parse_data_spec

log = logging.getLogger(__name__)

#: Default size of the embedded simulated dataset used by ``--data synthetic``.
SYNTHETIC_DEFAULTS = {"n": 400, "size": 256, "seed": 0, "x": "dm1200-like", "y": "dm96-like"}


def synthetic_split(spec: DataSpec, split: str, *, size: int | None = None, second_y: bool = False) -> PairedSet:
    """The simulator's pairs for one split: items are assigned to splits 80/10/10 by index.

    Each item depends only on ``(seed, index)``, so the same spec always gives the same data.
    """
    from ..sim import simulate_pairs

    opts = {**SYNTHETIC_DEFAULTS, **spec.options}
    n = int(opts["n"])
    n_train, n_val = int(round(n * 0.8)), int(round(n * 0.1))
    start, count = {"train": (0, n_train), "val": (n_train, n_val),
                    "test": (n_train + n_val, n - n_train - n_val)}[split]
    return simulate_pairs(count, size=int(size or opts["size"]), seed=int(opts["seed"]), x_system=opts["x"],
                          y_system=opts["y"], second_y=second_y, start=start)


def load_training_data(spec: str | DataSpec, *, size: int = 256, seed: int = 0, split: str = "train",
                       kinds: tuple[str, ...] = ("paired",)) -> PairedSet | UnpairedSet:
    """Load the ``split`` of a dataset for fitting a normalizer whose data kinds are ``kinds``."""
    s = parse_data_spec(spec) if isinstance(spec, str) else spec
    if s.kind == "synthetic":
        return synthetic_split(s, split, size=size)
    if s.kind == "paired":
        return PairedFolder(s.path, seed=seed).load(split, size=size)
    if s.kind == "resim":
        from ..sim import resimulate_folder  # noqa: F401  (wired by the benchmark's resim stage)

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


__all__ = ["load_training_data", "synthetic_split", "LabelledFolder"]
