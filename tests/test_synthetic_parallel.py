"""The embedded dataset simulated in worker processes equals the serial simulation exactly."""

from __future__ import annotations

import torch

from cellbench.data.spec import DataSpec
from cellbench.sim import synthetic
from cellbench.sim.pairs import simulate_pairs


def test_parallel_split_equals_serial(monkeypatch):
    monkeypatch.setattr(synthetic, "PARALLEL_MIN", 1)
    spec = DataSpec("synthetic", None, {"n": "40", "size": "64"})
    par = synthetic.synthetic_split(spec, "test", size=64, second_y=True, workers=2)
    ser = simulate_pairs(4, size=64, seed=0, second_y=True, start=36)
    assert par.ids == ser.ids and par.labels == ser.labels
    for k in ("x", "y", "y2"):
        a, b = getattr(par, k), getattr(ser, k)
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b), k
    assert torch.equal(par.masks, ser.masks)


def test_small_split_stays_in_process(monkeypatch):
    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("a split below PARALLEL_MIN must not start worker processes")

    monkeypatch.setattr(synthetic, "_simulate_parallel", boom)
    spec = DataSpec("synthetic", None, {"n": "20", "size": "64"})
    assert len(synthetic.synthetic_split(spec, "train", size=64, workers=2)) == 16


def test_all_splits_in_one_pool_equal_the_serial_splits_in_eight_bits(monkeypatch):
    """``synthetic_splits`` (one worker pool for every split, uint8 throughout: the run's data stage) gives
    each split's pixels, masks, labels and ids exactly as the per-split serial simulation rounded to 8 bits,
    with 2 workers and with 1; only the splits named in ``second_y`` get the second rendering."""
    monkeypatch.setattr(synthetic, "PARALLEL_MIN", 1)
    spec = DataSpec("synthetic", None, {"n": "20", "size": "48", "test_n": "6"})
    splits = ("train", "val", "test")
    for workers in (2, 1):
        got = synthetic.synthetic_splits(spec, splits, size=48, second_y=("test",), workers=workers)
        assert list(got) == list(splits)
        for s in splits:
            ser = synthetic.synthetic_split(spec, s, size=48, second_y=(s == "test"), workers=1)
            g = got[s]
            assert g.ids == ser.ids and g.labels == ser.labels and torch.equal(g.masks, ser.masks)
            for k in ("x", "y", "y2"):
                a, b = getattr(g, k), getattr(ser, k)
                if s != "test" and k == "y2":
                    assert a is None and b is None
                    continue
                assert a.dtype == torch.uint8 and torch.equal(a, b.mul(255).round().to(torch.uint8)), (s, k)
        assert [len(got[s]) for s in splits] == [16, 2, 6]
