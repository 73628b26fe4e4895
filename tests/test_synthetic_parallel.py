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
