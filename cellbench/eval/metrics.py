"""The metric registry: every metric name of the results, with its direction and unit.

Direction lives with the metric (cf. pyiqa's ``lower_better``, torchmetrics' ``higher_is_better``),
so the report ranks methods and marks the best value of each column without special cases. Every
record is made here, through :func:`make_record`, which fills unit and direction from the
registry; :func:`cellbench.results.save_results` refuses metrics that are not registered::

    from cellbench.eval.metrics import METRICS, make_record
    METRICS.get("ciede2000_mean").higher_is_better   # False
    make_record("run", "hm", "psnr", 31.2, region="wbc", n=80)   # unit "dB", higher is better

Importing this module is cheap (no numpy/torch/scipy): ``source`` names the implementing function
as ``"module:attribute"``, imported by :meth:`MetricSpec.function` on demand. Names follow
``docs/run-folder.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..registry import Registry
from ..results import Record

__all__ = ["MetricSpec", "METRICS", "higher_is_better", "make_record", "reference_record"]

MetricKind = Literal["paired", "distribution", "classifier", "per_cell_type", "speed", "diagnostic"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: name, where it is computed, its kind, direction and unit.

    ``higher_is_better`` is ``None`` for figures that are not quality scores (a colour mean, a
    p-value): the report shows them but does not rank by them.
    """

    name: str
    source: str
    kind: MetricKind
    higher_is_better: bool | None
    unit: str = ""
    description: str = ""

    def function(self) -> Callable[..., Any]:
        """The function computing the metric (imported on first use)."""
        module, _, attr = self.source.partition(":")
        return getattr(importlib.import_module(module), attr)


METRICS: Registry[MetricSpec] = Registry("metric")


def _add(name: str, source: str, kind: MetricKind, hib: bool | None, unit: str, description: str) -> None:
    METRICS.add(name, MetricSpec(name, source, kind, hib, unit, description), description)


_E = "cellbench.eval."

# classifier-based (percent, 95 % Wilson CI)
_add("agreement", _E + "agreement:agreement", "classifier", True, "%",
     "Same-class agreement: classifier(G(x)) == classifier(y), percent of test pairs (paper sec. 6)")
_add("accuracy", _E + "agreement:accuracy", "classifier", True, "%",
     "Classifier accuracy on G(x) against the true labels, percent")
_add("accuracy_gain", _E + "agreement:accuracy", "classifier", True, "pp",
     "Cross-system track: accuracy on G(x) minus accuracy on the raw X images, percentage points")
_add("mcnemar_p", _E + "agreement:mcnemar_exact", "classifier", None, "",
     "Exact McNemar test p-value between two methods' per-pair agreement (two-sided)")
_add("js_consistency", _E + "agreement:js_divergence", "classifier", False, "bits",
     "Prediction consistency: mean Jensen-Shannon divergence (base 2, 0-1) between the classifier's "
     "class probabilities on G(x) and on y (0 = identical; does not saturate when the calls agree)")
_add("flip_rate", _E + "agreement:flip_rate", "classifier", False, "%",
     "Percent of confidently classified cells (classifier's probability on y >= extra.threshold) "
     "whose class on G(x) differs")
_add("paired_diff", _E + "agreement:paired_bootstrap_difference", "classifier", None, "",
     "Difference of a per-image metric between two methods (mean(A) - mean(B), extra.metric, "
     "extra.unit) with a paired bootstrap 95 % interval; not ranked")

# full-reference image metrics (region "image" or "wbc")
_add("psnr", _E + "image:psnr", "paired", True, "dB",
     "Peak signal-to-noise ratio of G(x) vs y, data range 1.0 (mean over images)")
_add("ssim", _E + "image:ssim", "paired", True, "",
     "SSIM (Gaussian window sigma 1.5, 11 taps, channel-averaged), mean over images")
_add("ciede2000_mean", _E + "image:ciede2000_stats", "paired", False, "dE00",
     "Mean per-pixel CIEDE2000 between G(x) and y (mean over images)")
_add("ciede2000_p95", _E + "image:ciede2000_stats", "paired", False, "dE00",
     "95th percentile of per-pixel CIEDE2000 between G(x) and y (mean over images)")

# colour statistics per cell type and region
for _ch in ("L", "a", "b"):
    _add(f"lab_{_ch}_mean", _E + "colour:colour_stats", "per_cell_type", None, "",
         f"Mean CIELAB {_ch}* of G(x) in the region (extra.target: of y)")
    _add(f"lab_{_ch}_std", _E + "colour:colour_stats", "per_cell_type", None, "",
         f"Standard deviation of CIELAB {_ch}* of G(x) in the region (extra.target: of y)")
    _add(f"w1_{_ch}", _E + "colour:colour_stats", "per_cell_type", False, "",
         f"Wasserstein-1 distance between the {_ch}* distributions of G(x) and y in the region")
_add("colour_delta_e", _E + "colour:colour_stats", "per_cell_type", False, "dE00",
     "CIEDE2000 between the mean CIELAB colour of G(x) and of y in the region")

# realism
_add("c2st_accuracy", _E + "realism:c2st", "distribution", False, "%",
     "Classifier two-sample test: held-out accuracy of a small CNN telling y from G(x) "
     "(50 % = indistinguishable)")
_add("fid", _E + "realism:fid", "distribution", False, "",
     "Frechet distance on the WBC classifier's penultimate features")
_add("kid", _E + "realism:kid", "distribution", False, "",
     "Kernel inception distance (unbiased MMD^2, cubic kernel) on the classifier's features")

# speed
_add("latency_ms_b1", _E + "profiling:profile_normalizer", "speed", False, "ms",
     "Median latency of transform at batch size 1")
_add("latency_ms_b1_p90", _E + "profiling:profile_normalizer", "speed", False, "ms",
     "90th percentile latency of transform at batch size 1")
_add("throughput_ips", _E + "profiling:profile_normalizer", "speed", True, "images/s",
     "Throughput of transform at the best batch size")
_add("peak_mem_mb", _E + "profiling:profile_normalizer", "speed", False, "MiB",
     "Peak memory of transform (CUDA allocated, or CPU RSS increase)")
_add("fit_seconds", "time:perf_counter", "speed", False, "s",
     "Wall-clock time to fit or train the method")

# robustness
_add("passthrough_images", "cellbench.methods.base:Normalizer", "diagnostic", False, "images",
     "Test images the method returned unchanged because it failed on them (Normalizer.passthrough_count)")


def higher_is_better(metric: str) -> bool | None:
    """Direction of a registered metric (``ConfigError`` with "did you mean" for unknown names)."""
    return METRICS.get(metric).higher_is_better


def make_record(run: str, method: str, metric: str, value: float, *, role: str = "method", **fields: Any) -> Record:
    """The one door for results: a :class:`~cellbench.results.Record` of a registered metric.

    ``unit`` and ``higher_is_better`` come from the registry (an unknown metric raises
    ``ConfigError`` with a "did you mean"); ``fields`` are the record's other fields (``split``,
    ``cell_type``, ``n``, ``ci_low``, ``ci_high``, ``region``, ``extra``).
    """
    spec = METRICS.get(metric)
    return Record(run=run, method=method, metric=metric, value=float(value), unit=spec.unit,
                  higher_is_better=spec.higher_is_better, role=role, **fields)


def reference_record(run: str, reference: str, metric: str, value: float, **fields: Any) -> Record:
    """A reference row (``role="reference"``): the ceiling, the classifier's own accuracy."""
    return make_record(run, reference, metric, value, role="reference", **fields)
