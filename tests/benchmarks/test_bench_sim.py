"""Throughput of the simulator: pairs per second at 256x256 (``pytest --benchmark-enable``).

Target (issue 3): at least 25 pairs/s on 2 CPU cores, i.e. at most 80 ms per pair per core; with
``write_paired_dataset(workers=2)`` the two cores each render and write their own pairs.
"""

from __future__ import annotations

import torch

from cellbench.sim import simulate_pair, write_paired_dataset


def test_bench_simulate_pair_256(benchmark):
    torch.set_num_threads(1)
    counter = iter(range(10**9))
    p = benchmark(lambda: simulate_pair(next(counter), size=256, seed=0))
    assert p.x.shape == (256, 256, 3)


def test_bench_write_16_pairs_two_workers(benchmark, tmp_path):
    counter = iter(range(10**6))
    root = benchmark.pedantic(
        lambda: write_paired_dataset(tmp_path / str(next(counter)), 16, size=256, workers=2, progress=False),
        rounds=2,
        iterations=1,
    )
    assert len(list((root / "X").rglob("*.png"))) == 16
