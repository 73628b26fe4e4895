"""The embedded simulated dataset (``--data synthetic[:k=v,...]``) and the ``--data`` loader for fitting.

The simulator sits above the data layer (it builds :class:`~cellbench.data.sets.PairedSet`), so
the data kinds that need it are resolved here: :func:`load_training_data` serves ``synthetic``
itself and hands every on-disk kind to :func:`cellbench.data.load.load_folder_data`.
"""

from __future__ import annotations

from ..data.load import load_folder_data
from ..data.sets import PairedSet, UnpairedSet
from ..data.spec import DataSpec, parse_data_spec
from .pairs import simulate_pairs

#: Default size of the embedded simulated dataset used by ``--data synthetic``.
SYNTHETIC_DEFAULTS = {"n": 400, "size": 256, "seed": 0, "x": "dm1200-like", "y": "dm96-like"}


def synthetic_split(spec: DataSpec, split: str, *, size: int | None = None, second_y: bool = False) -> PairedSet:
    """The simulator's pairs for one split: items are assigned to splits 80/10/10 by index.

    Option ``test_n`` (``synthetic:n=800,test_n=400``) makes the test split that many items instead
    (items ``n_train + n_val ..``), so the evaluation can be larger than the fitting sets allow.
    Each item depends only on ``(seed, index)``, so the same spec always gives the same data.
    """
    opts = {**SYNTHETIC_DEFAULTS, **spec.options}
    n = int(opts["n"])
    n_train, n_val = int(round(n * 0.8)), int(round(n * 0.1))
    n_test = int(opts["test_n"]) if int(opts.get("test_n") or 0) > 0 else n - n_train - n_val
    start, count = {"train": (0, n_train), "val": (n_train, n_val),
                    "test": (n_train + n_val, n_test)}[split]
    return simulate_pairs(count, size=int(size or opts["size"]), seed=int(opts["seed"]), x_system=opts["x"],
                          y_system=opts["y"], second_y=second_y, start=start)


def load_training_data(spec: str | DataSpec, *, size: int = 256, seed: int = 0, split: str = "train",
                       kinds: tuple[str, ...] = ("paired",)) -> PairedSet | UnpairedSet:
    """Load the ``split`` of a dataset for fitting a normalizer whose data kinds are ``kinds``.

    ``synthetic`` comes from the simulator (:func:`synthetic_split`); every other kind from
    disk (:func:`cellbench.data.load.load_folder_data`).
    """
    s = parse_data_spec(spec) if isinstance(spec, str) else spec
    if s.kind == "synthetic":
        return synthetic_split(s, split, size=size)
    return load_folder_data(s, size=size, seed=seed, split=split, kinds=kinds)


__all__ = ["SYNTHETIC_DEFAULTS", "load_training_data", "synthetic_split"]
