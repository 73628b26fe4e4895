"""benchmarks/speed_guard.py: ratios to a reference benchmark cancel the machine's speed; a real
regression fails, noise and a uniformly slower machine pass."""

from __future__ import annotations

import json

import pytest

REF = "test_transform_throughput_256[poly]"
BASE = {REF: 0.10, "test_transform_throughput_256[hm]": 0.05, "test_bench_psnr": 0.02, "test_hm_fit_1000_pairs": 12.0}


def bench_json(path, medians, **extra):
    """A minimal pytest-benchmark JSON: the fields the guard reads, as pytest-benchmark writes them."""
    data = {
        "machine_info": {"node": "ci", "cpu": {"brand_raw": "test cpu"}},
        "commit_info": {"id": "abc", "dirty": False},
        "datetime": "2026-01-01T00:00:00",
        "benchmarks": [{"name": k, "fullname": f"tests/benchmarks/x.py::{k}", "stats": {"median": v, "mean": v}}
                       for k, v in medians.items()],
        **extra,
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def guard(benchmark_script):
    return benchmark_script("speed_guard")


@pytest.fixture
def baseline(tmp_path, guard):
    path = tmp_path / "baseline.json"
    assert guard.main([str(bench_json(tmp_path / "base-run.json", BASE)), "--baseline", str(path),
                       "--write-baseline"]) == 0
    stored = json.loads(path.read_text())
    assert stored["reference"] == REF and stored["ratios"][REF] == 1.0
    assert stored["ratios"]["test_hm_fit_1000_pairs"] == pytest.approx(120.0)
    assert stored["source"]["commit"] == "abc"
    return path


def test_a_uniformly_slower_machine_passes(tmp_path, guard, baseline, capsys):
    slow = {k: 5 * v for k, v in BASE.items()}  # every median 5x: the ratios do not move
    assert guard.main([str(bench_json(tmp_path / "run.json", slow)), "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    assert "PASS, 4 benchmarks" in out and "1.00x" in out


def test_noise_within_the_factor_passes(tmp_path, guard, baseline):
    noisy = dict(BASE, **{"test_transform_throughput_256[hm]": 0.05 * 2.5, "test_bench_psnr": 0.02 * 0.4})
    assert guard.main([str(bench_json(tmp_path / "run.json", noisy)), "--baseline", str(baseline)]) == 0


def test_a_regression_fails_and_is_named(tmp_path, guard, baseline, capsys):
    slower_hm = dict(BASE, **{"test_transform_throughput_256[hm]": 0.05 * 3.5})
    assert guard.main([str(bench_json(tmp_path / "run.json", slower_hm)), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert "FAIL, 1 of 4" in out and "test_transform_throughput_256[hm] (3.5x)" in out
    # every ratio is printed, the passing ones too
    for name in BASE:
        assert name in out
    # a larger factor tolerates it
    assert guard.main([str(tmp_path / "run.json"), "--baseline", str(baseline), "--factor", "4"]) == 0


def test_a_slow_median_with_a_fast_round_is_noise_not_a_regression(tmp_path, guard, baseline, capsys):
    """Two disturbed rounds of three raise a median 3.5x; the fastest round is at the baseline ratio, so
    it is load, reported as noisy; when the fastest round is 3.5x slower too, it fails."""
    hm = "test_transform_throughput_256[hm]"

    def run(path, hm_min):
        data = json.loads(bench_json(path, dict(BASE, **{hm: 0.05 * 3.5})).read_text())
        for b in data["benchmarks"]:
            b["stats"]["min"] = hm_min if b["name"] == hm else b["stats"]["median"]
        path.write_text(json.dumps(data))
        return str(path)

    assert guard.main([run(tmp_path / "noisy.json", 0.05), "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    assert "noisy (fastest round 1.00x: load, not code)" in out and "PASS" in out
    assert guard.main([run(tmp_path / "slow.json", 0.05 * 3.5), "--baseline", str(baseline)]) == 1
    assert f"{hm} (3.5x)" in capsys.readouterr().out


def test_a_faster_reference_is_a_regression_of_everything_else(tmp_path, guard, baseline):
    """Ratios are relative: if only the reference gets 4x faster, every other ratio grows 4x."""
    run = dict(BASE, **{REF: 0.10 / 4})
    assert guard.main([str(bench_json(tmp_path / "run.json", run)), "--baseline", str(baseline)]) == 1


def test_missing_and_new_benchmarks_are_listed_not_failed(tmp_path, guard, baseline, capsys):
    run = {k: v for k, v in BASE.items() if k != "test_bench_psnr"}
    run["test_bench_new"] = 1.0
    assert guard.main([str(bench_json(tmp_path / "run.json", run)), "--baseline", str(baseline)]) == 0
    rows = {r["name"]: r["status"] for r in guard.compare(guard.ratios(run, REF),
                                                             json.loads(baseline.read_text())["ratios"])}
    assert rows["test_bench_psnr"] == "missing" and rows["test_bench_new"] == "new"
    assert "missing" in capsys.readouterr().out


def test_unusable_inputs_exit_2(tmp_path, guard, baseline, capsys):
    no_ref = {k: v for k, v in BASE.items() if k != REF}
    assert guard.main([str(bench_json(tmp_path / "a.json", no_ref)), "--baseline", str(baseline)]) == 2
    assert "reference benchmark" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert guard.main([str(tmp_path / "bad.json"), "--baseline", str(baseline)]) == 2
    disabled = bench_json(tmp_path / "d.json", {})  # pytest run without --benchmark-enable
    assert guard.main([str(disabled), "--baseline", str(baseline)]) == 2
    assert guard.main([str(bench_json(tmp_path / "r.json", BASE)), "--baseline", str(tmp_path / "none.json")]) == 2


def test_the_committed_baseline_is_readable(guard):
    stored = json.loads(guard.DEFAULT_BASELINE.read_text())
    assert stored["ratios"][stored["reference"]] == 1.0
    assert all(v > 0 for v in stored["ratios"].values()) and len(stored["ratios"]) >= 10
