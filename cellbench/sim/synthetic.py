"""The embedded simulated dataset (``--data synthetic[:k=v,...]``) and the ``--data`` loader for fitting.

The simulator sits above the data layer (it builds :class:`~cellbench.data.sets.PairedSet`), so
the data kinds that need it are resolved here: :func:`load_training_data` serves ``synthetic``
itself and hands every on-disk kind to :func:`cellbench.data.load.load_folder_data`.
"""

from __future__ import annotations

import torch

from ..data.load import load_folder_data
from ..data.sets import PairedSet, UnpairedSet
from ..data.spec import DataSpec, parse_data_spec
from ..tensors import as_float01
from ..threads import die_with_parent, usable_cores
from .pairs import simulate_pairs

#: Default size of the embedded simulated dataset used by ``--data synthetic``.
SYNTHETIC_DEFAULTS = {"n": 400, "size": 256, "seed": 0, "x": "dm1200-like", "y": "dm96-like"}


def _split_items(spec: DataSpec, split: str, size: int | None, second_y: bool) -> tuple[int, int, dict]:
    """``(start, count, simulate_pairs options)`` of one split of a ``synthetic`` spec."""
    opts = {**SYNTHETIC_DEFAULTS, **spec.options}
    n = int(opts["n"])
    n_train, n_val = int(round(n * 0.8)), int(round(n * 0.1))
    n_test = int(opts["test_n"]) if int(opts.get("test_n") or 0) > 0 else n - n_train - n_val
    start, count = {"train": (0, n_train), "val": (n_train, n_val),
                    "test": (n_train + n_val, n_test)}[split]
    kw = dict(size=int(size or opts["size"]), seed=int(opts["seed"]), x_system=opts["x"], y_system=opts["y"],
              second_y=second_y)
    return start, count, kw


def synthetic_split(spec: DataSpec, split: str, *, size: int | None = None, second_y: bool = False,
                    workers: int | None = None) -> PairedSet:
    """The simulator's pairs for one split: items are assigned to splits 80/10/10 by index.

    Option ``test_n`` (``synthetic:n=800,test_n=400``) makes the test split that many items instead
    (items ``n_train + n_val ..``), so the evaluation can be larger than the fitting sets allow.
    Each item depends only on ``(seed, index)``, so the same spec always gives the same data, with
    any number of ``workers`` (processes; default: the usable cores, :func:`cellbench.threads.usable_cores`).
    """
    start, count, kw = _split_items(spec, split, size, second_y)
    workers = usable_cores() if workers is None else max(1, int(workers))
    if workers <= 1 or count < PARALLEL_MIN:
        return simulate_pairs(count, start=start, **kw)
    return _simulate_parallel(start, count, kw, workers)


def synthetic_splits(spec: DataSpec, splits: tuple[str, ...], *, size: int | None = None,
                     second_y: tuple[str, ...] = (), workers: int | None = None) -> dict[str, PairedSet]:
    """Several splits of :func:`synthetic_split` at once, as 8-bit images (what the run's data stage stores).

    One pool of ``workers`` processes simulates the chunks of every split (one start-up instead of one
    per split, and no idle worker at the end of a small split); the images stay ``uint8`` from the
    workers to the caller. The pixels equal ``synthetic_split``'s rounded to 8 bits exactly, for any
    number of workers (``tests/test_synthetic_parallel.py``). ``second_y``: the splits that also get
    the second Y rendering.
    """
    items = {s: _split_items(spec, s, size, s in second_y) for s in splits}
    workers = usable_cores() if workers is None else max(1, int(workers))
    if workers <= 1 or sum(count for _, count, _ in items.values()) < PARALLEL_MIN:
        return {s: _as_pairs([_eight_bit(simulate_pairs(count, start=start, **kw))], kw)
                for s, (start, count, kw) in items.items()}
    return _simulate_pool(items, workers)


def _simulate_pool(items: dict[str, tuple[int, int, dict]], workers: int) -> dict[str, PairedSet]:
    """``{name: (start, count, simulate_pairs options)}`` simulated in contiguous chunks by ``workers``
    spawned processes, as uint8 :class:`PairedSet` per name.

    Every item depends only on ``(seed, index)`` and the renderings are 8-bit, so the result equals
    the serial one exactly (``tests/test_synthetic_parallel.py``); the main process, which holds the
    run's other state, is never forked.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    total = sum(count for _, count, _ in items.values())
    chunk = -(-total // (workers * 4))  # a few chunks per worker: balanced, bounded pickles
    jobs = [(name, c, min(chunk, start + count - c), kw) for name, (start, count, kw) in items.items()
            for c in range(start, start + count, chunk)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=die_with_parent) as ex:
        parts = list(ex.map(_simulate_chunk, [j[1] for j in jobs], [j[2] for j in jobs], [j[3] for j in jobs]))
    return {name: _as_pairs([q for j, q in zip(jobs, parts, strict=True) if j[0] == name], kw)
            for name, (_, _, kw) in items.items()}


def _as_pairs(parts: list[dict], kw: dict) -> PairedSet:
    """:func:`_simulate_chunk` results, concatenated in order, as a uint8 :class:`PairedSet`."""
    return PairedSet(x=torch.cat([q["x"] for q in parts]), y=torch.cat([q["y"] for q in parts]),
                     labels=[lab for q in parts for lab in q["labels"]], ids=[i for q in parts for i in q["ids"]],
                     masks=torch.cat([q["masks"] for q in parts]),
                     y2=torch.cat([q["y2"] for q in parts]) if kw["second_y"] else None)


#: Fewest pairs for which :func:`synthetic_split` simulates in worker processes (below, starting them
#: costs more than it saves).
PARALLEL_MIN = 64


def _simulate_chunk(start: int, count: int, kw: dict) -> dict:
    """Pairs ``start .. start+count-1`` as 8-bit tensors (what crosses the process boundary)."""
    torch.set_num_threads(1)
    return _eight_bit(simulate_pairs(count, start=start, **kw))


def _eight_bit(p: PairedSet) -> dict:
    """A simulated :class:`PairedSet` (float ``k / 255``) as a dict of 8-bit images, masks, labels and ids."""
    u8 = {k: getattr(p, k).mul(255.0).round_().to(torch.uint8) for k in ("x", "y", "y2") if getattr(p, k) is not None}
    return {**u8, "masks": p.masks, "labels": list(p.labels), "ids": list(p.ids)}


def _simulate_parallel(start: int, count: int, kw: dict, workers: int) -> PairedSet:
    """:func:`simulate_pairs` of one split in ``workers`` spawned processes (:func:`_simulate_pool`), as
    float32 ``k / 255`` images like the serial simulation."""
    p = _simulate_pool({"split": (start, count, kw)}, workers)["split"]
    return PairedSet(x=as_float01(p.x), y=as_float01(p.y), labels=p.labels, ids=p.ids, masks=p.masks,
                     y2=None if p.y2 is None else as_float01(p.y2))


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


__all__ = ["SYNTHETIC_DEFAULTS", "load_training_data", "synthetic_split", "synthetic_splits"]
