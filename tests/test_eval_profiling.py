"""Profiling: figures present and consistent, warm-up excluded, time budget respected."""

from __future__ import annotations

import time

import pytest
import torch

from cellbench.data.sets import PairedSet
from cellbench.eval.profiling import profile_function, profile_normalizer
from cellbench.methods.base import create_normalizer


class Sleepy:
    """transform sleeps ``per_call`` seconds; the first ``slow_first`` calls sleep 10x longer."""

    name = "sleepy"

    def __init__(self, per_call: float, slow_first: int = 0) -> None:
        self.per_call, self.slow_first, self.calls = per_call, slow_first, 0

    def to(self, device):
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.per_call * (10 if self.calls <= self.slow_first else 1))
        return x


def test_profile_figures_and_warmup_excluded():
    n = Sleepy(0.004, slow_first=2)
    p = profile_normalizer(n, size=32, batch_sizes=(1, 2), warmup=2, repeats=5, max_seconds=30)
    for k in ("latency_ms_b1", "latency_ms_b1_p90", "throughput_ips", "batch_size", "peak_mem_mb", "machine"):
        assert k in p
    # sleep is a lower bound of each call; the two 40 ms warm-up calls must not be in the figures
    assert 4.0 <= p["latency_ms_b1"] < 40.0 and p["latency_ms_b1_p90"] >= p["latency_ms_b1"]
    assert p["n_latency"] == 5 and not p["truncated"]
    assert n.calls == 2 * (2 + 5)  # warm-up (the first one measures memory) + timed, both batch sizes
    # a sleep per call costs the same at batch 2: throughput doubles, so batch 2 is the best
    assert p["batch_size"] == 2
    assert p["throughput_by_batch"][2] > p["throughput_by_batch"][1]
    assert p["device"] == "cpu" and p["image_size"] == 32 and p["method"] == "sleepy"
    assert "torch" in p["machine"]


def test_budget_stops_slow_methods():
    n = Sleepy(0.05)
    p = profile_normalizer(n, size=16, batch_sizes=(1, 2, 4, 8), warmup=1, repeats=50, max_seconds=0.3)
    assert p["truncated"]
    assert 1 <= p["n_latency"] < 50
    assert set(p["throughput_by_batch"]) == {1}  # larger batches skipped once the budget is gone
    assert n.calls < 10


def test_real_normalizer_and_memory():
    """Peak memory is the increase during a call, not the process's size: identity allocates at
    most its output (0.2 MiB at batch 4 of 64 px), while ``poly`` at batch 16 of 256 px expands
    every pixel into 20 monomials (20 x 16 x 65,536 floats = 80 MiB in float32) besides its
    12 MiB output."""
    norm = create_normalizer("identity")
    p = profile_normalizer(norm, size=64, batch_sizes=(1, 4), warmup=1, repeats=3, max_seconds=20)
    assert p["throughput_ips"] > 0 and set(p["peak_mem_by_batch"]) == {1, 4}
    assert p["peak_mem_mb"] < 16  # the process itself holds hundreds of MiB (torch, numpy)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=g)
    poly = create_normalizer("poly").fit(PairedSet(x=x, y=x.sqrt(), labels=["neutrophil"] * 8), seed=0)
    q = profile_normalizer(poly, size=256, batch_sizes=(16,), warmup=1, repeats=1, max_seconds=60)
    assert q["peak_mem_by_batch"][16] >= 12, q["peak_mem_by_batch"]


def test_cpu_peak_memory_sees_allocations():
    def alloc(x):
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.02)  # let the sampler see it
        return x + big[0]

    p = profile_function(alloc, size=16, batch_sizes=(1,), warmup=0, repeats=3)
    assert p["peak_mem_mb"] >= 32


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="cuda"):
        profile_function(lambda x: x, device="cuda")


def test_conditions_of_the_figures_recorded():
    """Rounds, spread, CPU time vs wall time and load average travel with the figures (issue #17)."""
    from cellbench.eval.profiling import format_profile

    p = profile_normalizer(Sleepy(0.003), size=16, batch_sizes=(1, 2), warmup=1, repeats=4, max_seconds=30)
    assert p["latency_by_batch"][2]["rounds"] == 4 and p["latency_by_batch"][1]["p90_ms"] >= 3.0
    assert p["spread_p90_median"] >= 1.0
    # a sleeping transform uses almost no CPU: CPU time is far below wall time
    assert p["wall_time_s"] >= 8 * 0.003 and p["cpu_per_wall"] < 0.5
    assert set(p["load_avg_1min"]) == {"start", "end"} and p["threads"] >= 1
    text = format_profile(p)
    assert "p90" in text and "CPU time / wall time" in text


def _synthetic_profile(*, load=(0.3, 0.4), cpus=2, spread=1.1, rounds=10, cpu_per_wall=1.0, device="cpu"):
    """A profile as profile_function returns it, with injected timings and load values."""
    return {"latency_by_batch": {1: {"median_ms": 10.0, "p90_ms": 10.0 * spread, "rounds": rounds, "spread": spread},
                                 4: {"median_ms": 30.0, "p90_ms": 31.0, "rounds": rounds, "spread": 31 / 30}},
            "spread_p90_median": spread, "n_latency": rounds, "cpu_time_s": cpu_per_wall * 2.0, "wall_time_s": 2.0,
            "cpu_per_wall": cpu_per_wall, "threads": 2, "cpu_count": cpus, "usable_cores": cpus,
            "load_avg_1min": {"start": load[0], "end": load[1]}, "device": device}


def test_disturbed_rule_on_injected_values():
    """docs/speed.md: load above the CPUs (+0.5), p90/median above 1.5 over >= 3 rounds, or < 0.5 CPU s per wall s."""
    from cellbench.eval.profiling import LOAD_MARGIN, MAX_SPREAD, disturbance, speed_conditions

    assert disturbance(_synthetic_profile()) == []
    # load: the worse of before/after counts; up to CPUs + margin is not disturbed
    assert disturbance(_synthetic_profile(load=(2.0 + LOAD_MARGIN, 0.1))) == []
    reasons = disturbance(_synthetic_profile(load=(0.2, 3.1)))
    assert reasons == ["load average 3.10 above the machine's 2 CPU(s)"]
    assert disturbance(_synthetic_profile(load=(3.1, 3.1), cpus=4)) == []
    # spread of the series at the batch size asked for
    wide = _synthetic_profile(spread=MAX_SPREAD + 0.4)
    assert disturbance(wide) == [f"wide spread: p90/median 1.90 > {MAX_SPREAD} over 10 rounds"]
    assert disturbance(wide, batch_size=4) == []  # batch 4's series is tight
    assert disturbance(_synthetic_profile(spread=3.0, rounds=2)) == []  # 2 rounds say nothing about spread
    # CPU time against wall time: only on the CPU
    starved = _synthetic_profile(cpu_per_wall=0.3)
    assert len(disturbance(starved)) == 1 and "0.30 CPU s per wall s" in disturbance(starved)[0]
    assert disturbance(_synthetic_profile(cpu_per_wall=0.3, device="cuda")) == []
    # missing load average (no os.getloadavg) is not a reason
    assert disturbance(_synthetic_profile(load=(None, None))) == []
    # several reasons at once, and what a speed record carries
    cond = speed_conditions(_synthetic_profile(load=(5.0, 5.0), spread=2.0), batch_size=1)
    assert cond["disturbed"] and len(cond["disturbed_reasons"]) == 2
    assert cond["rounds"] == 10 and cond["spread_p90_median"] == 2.0 and cond["threads"] == 2
    assert cond["load_avg_1min"] == {"start": 5.0, "end": 5.0} and cond["cpu_per_wall"] == 1.0
    ok = speed_conditions(_synthetic_profile(), batch_size=4)
    assert not ok["disturbed"] and ok["disturbed_reasons"] == [] and ok["spread_p90_median"] == round(31 / 30, 4)


def test_real_profile_carries_usable_cores_and_format_says_disturbed(monkeypatch):
    import os

    from cellbench.eval import profiling

    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    monkeypatch.setattr(profiling, "_cpu_busy_seconds", lambda: None)  # no /proc/stat: the load average decides
    p = profile_function(lambda x: x * 2, size=16, batch_sizes=(1,), warmup=1, repeats=3, max_seconds=10)
    assert p["usable_cores"] >= 1 and p["load_avg_1min"] == {"start": 99.0, "end": 99.0}
    assert any("load average 99.00" in r for r in profiling.disturbance(p))
    assert "DISTURBED" in profiling.format_profile(p)


def test_disturbed_rule_prefers_the_measured_cpu_of_other_processes():
    """Where the machine's busy CPU time is known, the CPU other processes used during the measurement
    decides, not the lagging load average (docs/speed.md)."""
    from cellbench.eval.profiling import OTHERS_MARGIN, disturbance

    quiet_but_high_load = {**_synthetic_profile(load=(2.8, 2.8)), "others_cpu_cores": 0.1}
    assert disturbance(quiet_but_high_load) == []
    busy = {**_synthetic_profile(load=(0.1, 0.1)), "others_cpu_cores": OTHERS_MARGIN + 0.7}
    assert disturbance(busy) == ["other processes used 1.20 CPU cores during the measurement (> 0.5)"]


def test_real_profile_measures_other_processes_cpu():
    """On Linux the profile reads /proc/stat: the other processes' CPU is a number >= 0 and at most the CPUs."""
    import os

    from cellbench.eval import profiling

    if profiling._cpu_busy_seconds() is None:
        pytest.skip("no /proc/stat on this system")
    import time

    def slow(x):  # a window of ~0.4 s: /proc/stat's 10 ms ticks resolve it
        time.sleep(0.08)
        return x * 2

    p = profile_function(slow, size=16, batch_sizes=(1,), warmup=1, repeats=4, max_seconds=10)
    assert p["others_cpu_cores"] is not None and 0.0 <= p["others_cpu_cores"] <= (os.cpu_count() or 1)
    # a profile of a few milliseconds waits out a window the 10 ms counters resolve: a figure, never a tick
    # read as several cores (6.5 "cores" on this 2-CPU machine before)
    p = profile_function(lambda x: x * 2, size=16, batch_sizes=(1,), warmup=1, repeats=3, max_seconds=10)
    assert p["others_cpu_cores"] is not None and 0.0 <= p["others_cpu_cores"] <= (os.cpu_count() or 1)


def test_speed_table_marks_disturbed_rows():
    """The report's speed table marks a disturbed measurement and says why (caption and cell tooltip)."""
    from cellbench.eval.metrics import make_record
    from cellbench.eval.profiling import speed_conditions
    from cellbench.report.tables import speed_table

    quiet = speed_conditions(_synthetic_profile())
    busy = speed_conditions(_synthetic_profile(load=(4.2, 4.0)))
    base = {"device": "cpu", "device_name": "x86_64", "image_size": 64}
    recs = [make_record("r", "hm", "latency_ms_b1", 3.0, split="speed", extra={**base, **quiet}),
            make_record("r", "ccgan", "latency_ms_b1", 30.0, split="speed", extra={**base, **busy})]
    table = speed_table(recs, ["hm", "ccgan"])
    cells = {row.method: row.cells[0] for row in table.rows}
    assert cells["ccgan"].text.endswith("⚠") and "DISTURBED: load average 4.20" in cells["ccgan"].tooltip
    assert "⚠" not in cells["hm"].text and "10 rounds" in cells["hm"].tooltip
    assert "ccgan (cpu): load average 4.20 above the machine's 2 CPU(s)" in table.caption
    assert "--redo-speed" in table.caption and "hm (cpu)" not in table.caption
