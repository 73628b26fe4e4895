"""The metric registry: every metric name of the results, with its direction and unit.

Direction lives with the metric (cf. pyiqa's ``lower_better``), so the report ranks methods and
marks the best value of each column without special cases::

    from cellbench.eval.metrics import METRICS, higher_is_better
    METRICS.get("ciede2000_mean").higher_is_better   # False
    higher_is_better("agreement")                     # True

Importing this module is cheap (no numpy/torch/scipy): each ``fn`` is a lazy reference that
imports its implementation on first call. Names follow ``docs/run-folder.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..registry import Registry

__all__ = ["MetricSpec", "METRICS", "LazyFunction", "higher_is_better", "metric_unit"]

MetricKind = Literal["paired", "distribution", "classifier", "per_cell_type", "speed"]


class LazyFunction:
    """A ``"module:attribute"`` reference, imported on first call (keeps this module light)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._fn: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        if self._fn is None:
            module, _, attr = self.target.partition(":")
            self._fn = getattr(importlib.import_module(module), attr)
        return self._fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyFunction({self.target!r})"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: name, the function computing it, its kind, direction and unit.

    ``higher_is_better`` is ``None`` for figures that are not quality scores (a colour mean, a
    p-value): the report shows them but does not rank by them.
    """

    name: str
    fn: Callable[..., Any]
    kind: MetricKind
    higher_is_better: bool | None
    unit: str = ""
    description: str = ""


METRICS: Registry[MetricSpec] = Registry("metric")


def _add(name: str, fn: str, kind: MetricKind, hib: bool | None, unit: str, description: str) -> None:
    METRICS.add(name, MetricSpec(name, LazyFunction(fn), kind, hib, unit, description), description)


_E = "cellbench.eval."

# classifier-based (percent, 95 % Wilson CI)
_add("agreement", _E + "agreement:agreement", "classifier", True, "%",
     "Same-class agreement: classifier(G(x)) == classifier(y), percent of test pairs (paper sec. 6)")
_add("accuracy", _E + "agreement:accuracy", "classifier", True, "%",
     "Classifier accuracy on G(x) against the true labels, percent")
_add("mcnemar_p", _E + "agreement:mcnemar_exact", "classifier", None, "",
     "Exact McNemar test p-value between two methods' per-pair agreement (two-sided)")

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


def higher_is_better(metric: str) -> bool | None:
    """Direction of a registered metric (``ConfigError`` with "did you mean" for unknown names)."""
    return METRICS.get(metric).higher_is_better


def metric_unit(metric: str) -> str:
    """Unit of a registered metric."""
    return METRICS.get(metric).unit
