"""Reading and decoding the 4,000 real PBC images through `cellbench data check` (target >= 500 images/s)."""

from __future__ import annotations

from cellbench.data.check import check_dataset


def test_bench_data_check_pbc(benchmark, pbc_dir):
    rep = benchmark.pedantic(check_dataset, args=(pbc_dir,), kwargs={"workers": 2}, rounds=3, iterations=1)
    assert rep.files_decoded == 4000 and rep.ok, rep.errors[:3]
    benchmark.extra_info["images"] = rep.files_decoded
    if benchmark.stats is not None:  # None under --benchmark-disable (the plain test run)
        benchmark.extra_info["images_per_s_median"] = rep.files_decoded / benchmark.stats.stats.median
