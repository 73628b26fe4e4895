"""Throughput of the simulator: pairs per second at 256x256 (``pytest --benchmark-enable``).

Target (issue 3): at least 25 pairs/s on 2 CPU cores, i.e. at most 80 ms per pair per core; with
``write_paired_dataset(workers=2)`` the two cores each render and write their own pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from cellbench.data import PairedFolder
from cellbench.sim import simulate_pair, write_paired_dataset
from cellbench.sim.pairs import item_id


def test_bench_simulate_pair_256(benchmark):
    torch.set_num_threads(1)
    counter = iter(range(10**9))
    p = benchmark(lambda: simulate_pair(next(counter), size=256, seed=0))
    assert p.x.shape == p.y.shape == (256, 256, 3) and p.mask.shape == (256, 256)
    # the timed pair is pair number `index` of the dataset (a pure function of seed and index)
    again = simulate_pair(int(p.id.rsplit("_", 1)[1]), size=256, seed=0)
    assert np.array_equal(p.x, again.x) and np.array_equal(p.y, again.y) and p.label == again.label
    assert np.abs(p.x.astype(int) - p.y.astype(int)).mean() > 5  # two different systems


def test_bench_write_16_pairs_two_workers(benchmark, tmp_path):
    counter = iter(range(10**6))
    root = benchmark.pedantic(
        lambda: write_paired_dataset(tmp_path / str(next(counter)), 16, size=256, workers=2, progress=False),
        rounds=2,
        iterations=1,
    )
    assert len(list((root / "X").rglob("*.png"))) == 16
    # what was written is what the simulator renders (item 3 of seed 0), read back through the data layer
    data = PairedFolder(root).load(None, size=256)
    i = data.ids.index(item_id(0, 3))
    ref = simulate_pair(3, size=256, seed=0)
    assert torch.equal(data.y[i], torch.from_numpy(ref.y).permute(2, 0, 1).float() / 255)
    assert torch.equal(data.x[i], torch.from_numpy(ref.x).permute(2, 0, 1).float() / 255)
