"""The metric registry covers every metric name of docs/run-folder.md, with the documented directions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cellbench.errors import CellbenchError, ConfigError
from cellbench.eval.metrics import METRICS, MetricSpec, higher_is_better, make_record, reference_record

DOC = Path(__file__).resolve().parents[1] / "docs" / "run-folder.md"


def doc_metric_names() -> set[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("Metric names:"):]
    names = set(re.findall(r"`([a-z0-9_]+)`", section))
    # expand "`lab_L_std`, ..." to the full family
    names |= {f"lab_{c}_{s}" for c in "Lab" for s in ("mean", "std")}
    # words in backticks that are regions/methods/extra keys, not metrics
    return names - {"extra", "vs", "statistic", "kid_std", "subset_size", "batch_size", "device",
                    "device_name", "image_size", "target", "image", "wbc", "cpu", "cuda", "all", "ci_low",
                    "ci_high"}


def test_every_documented_metric_is_registered():
    names = doc_metric_names()
    assert {"agreement", "psnr", "w1_b", "c2st_accuracy", "kid", "throughput_ips", "fit_seconds"} <= names
    missing = names - set(METRICS.names())
    assert not missing, f"metrics in docs/run-folder.md without a MetricSpec: {sorted(missing)}"


@pytest.mark.parametrize("name,direction", [
    ("agreement", True), ("accuracy", True), ("psnr", True), ("ssim", True), ("ciede2000_mean", False),
    ("ciede2000_p95", False), ("colour_delta_e", False), ("w1_L", False), ("c2st_accuracy", False),
    ("fid", False), ("kid", False), ("latency_ms_b1", False), ("throughput_ips", True),
    ("peak_mem_mb", False),
    ("mcnemar_p", None), ("lab_L_mean", None), ("fit_seconds", False), ("accuracy_gain", True),
    ("passthrough_images", False), ("js_consistency", False), ("flip_rate", False), ("paired_diff", None),
])
def test_directions(name, direction):
    assert higher_is_better(name) is direction
    spec = METRICS.get(name)
    assert isinstance(spec, MetricSpec) and spec.name == name and spec.description


def test_units_and_kinds():
    assert METRICS.get("agreement").unit == "%" and METRICS.get("c2st_accuracy").unit == "%"
    assert METRICS.get("psnr").unit == "dB"
    kinds = {METRICS.get(n).kind for n in METRICS.names()}
    assert kinds <= {"paired", "distribution", "classifier", "per_cell_type", "speed", "diagnostic"}


def test_metric_sources_resolve():
    for name in METRICS.names():
        assert callable(METRICS.get(name).function())


def test_make_record_fills_unit_and_direction_and_save_refuses_unknown(tmp_path):
    from cellbench.results import Record, save_results

    r = make_record("run", "hm", "colour_delta_e", 2.5, region="wbc", n=4)
    assert (r.unit, r.higher_is_better, r.role) == ("dE00", False, "method")
    assert make_record("run", "hm", "fit_seconds", 1.0).higher_is_better is False
    gain = make_record("run", "hm", "accuracy_gain", 3.0)
    assert (gain.unit, gain.higher_is_better) == ("pp", True)
    p = make_record("run", "hm", "passthrough_images", 2)
    assert (p.unit, p.higher_is_better) == ("images", False)
    assert reference_record("run", "ceiling", "agreement", 90.0).role == "reference"
    with pytest.raises(ConfigError, match="Did you mean 'psnr'"):
        make_record("run", "hm", "psrn", 1.0)
    with pytest.raises(CellbenchError, match="not registered"):
        save_results(tmp_path, [Record("run", "hm", "sharpness", 1.0)], {}, metrics=METRICS)
    assert not (tmp_path / "results.json").exists()


def test_old_results_without_role_read_references_by_name():
    from cellbench.results import Record

    old = {"run": "r", "method": "ceiling", "metric": "agreement", "value": 90.0}
    assert Record.from_dict(old).role == "reference"
    assert Record.from_dict({**old, "method": "hm"}).role == "method"
    assert Record.from_dict({**old, "method": "hm", "role": "reference"}).role == "reference"


def test_unknown_metric_did_you_mean():
    with pytest.raises(ConfigError, match="Did you mean 'psnr'"):
        METRICS.get("psrn")


def test_import_is_light():
    code = ("import sys, cellbench.eval.metrics, cellbench.eval; "
            "print('torch' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
