"""Turn a method's outputs into result records: paired metrics, agreement, McNemar, realism, speed.

The functions here glue the pure metrics (:mod:`.image`, :mod:`.colour`, :mod:`.agreement`,
:mod:`.realism`, :mod:`.profiling`) to the results schema; every record is made by
:func:`cellbench.eval.metrics.make_record`, so unit and direction come from the metric registry.
The benchmark runner (:mod:`cellbench.bench.runner`) calls them once per method and stage; names,
regions and units are those of ``docs/run-folder.md``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.sets import PairedSet
from ..results import Record
from ..tensors import as_float01
from .agreement import (
    CONFIDENT,
    Proportion,
    confident_flips,
    js_divergence,
    mcnemar_exact,
    paired_bootstrap_difference,
    per_class,
    proportion,
)
from .metrics import METRICS, make_record

log = logging.getLogger(__name__)

__all__ = [
    "evaluate_paired",
    "paired_evaluation",
    "PairedEvaluation",
    "class_probabilities",
    "consistency_records",
    "paired_difference_records",
    "per_image_key",
    "BOOTSTRAP_RESAMPLES",
    "region_masks",
    "image_records",
    "colour_records",
    "agreement_records",
    "proportion_records",
    "classifier_records",
    "mcnemar_records",
    "realism_records",
    "speed_records",
    "fit_records",
    "passthrough_records",
    "accuracy_gain_records",
    "unpaired_colour_records",
]

IMAGE_METRICS = ("psnr", "ssim", "ciede2000_mean", "ciede2000_p95")
#: Resamples of the paired bootstrap intervals of differences between methods.
BOOTSTRAP_RESAMPLES = 2000
#: Per-image metrics (metric, region) whose differences between methods are bootstrapped, in display order.
PAIRED_DIFF_KEYS = (("agreement", "all"), ("js_consistency", "all"), ("flip_rate", "all"),
                    ("ciede2000_mean", "wbc"), ("ciede2000_mean", "image"), ("ciede2000_p95", "wbc"),
                    ("ciede2000_p95", "image"), ("psnr", "wbc"), ("psnr", "image"), ("ssim", "wbc"),
                    ("ssim", "image"), ("accuracy", "all"))


def per_image_key(metric: str, region: str = "all") -> str:
    """The name of a per-image value array: ``"<metric>/<region>"`` (e.g. ``"ciede2000_mean/wbc"``)."""
    return f"{metric}/{region}"


def _cell_types(labels: Sequence[str]) -> list[str]:
    return ["all", *sorted(set(labels))]


def _mean_ci(v: np.ndarray, confidence: float = 0.95) -> tuple[float, float | None, float | None, int]:
    """Mean of the finite-or-inf values (NaN dropped) and a Student-t CI of the mean."""
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    n = len(v)
    if n == 0:
        return float("nan"), None, None, 0
    mean = float(v.mean())
    if n < 2 or not np.all(np.isfinite(v)):
        return mean, None, None, n
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def _check_outputs(outputs: torch.Tensor, data: PairedSet, method: str) -> torch.Tensor:
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 4 or outputs.shape[1] != 3:
        got = getattr(outputs, "shape", type(outputs).__name__)
        raise ValueError(f"{method}: outputs must be a (N, 3, H, W) tensor, got {got}")
    if tuple(outputs.shape) != tuple(data.y.shape):
        raise ValueError(
            f"{method}: outputs {tuple(outputs.shape)} do not match the test targets {tuple(data.y.shape)}; "
            "transform the test set's x (same size and order)"
        )
    if outputs.dtype == torch.uint8:  # 8-bit outputs (as saved): nothing to check or clip, kept small
        return outputs.detach().cpu()
    out = outputs.detach().float().cpu()
    if not torch.isfinite(out).all():
        raise ValueError(f"{method}: outputs contain NaN or inf; the method is broken, check its transform")
    lo, hi = float(out.min()), float(out.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        log.warning("%s: outputs span [%.3f, %.3f]; clipping to [0, 1] before evaluation", method, lo, hi)
    if lo < 0.0 or hi > 1.0:
        out = out.clamp(0.0, 1.0)  # a copy: the caller's tensor is never modified
    return out


def region_masks(data: PairedSet, *, seed: int = 0) -> torch.Tensor | None:
    """Region label maps ``(N, H, W)`` of the test targets: the dataset's masks when present, else
    the project's colour segmentation (:class:`cellbench.segmentation.ColourSegmenter`) fitted on
    and applied to ``data.y`` (seeded). ``None`` when neither is available."""
    if data.masks is not None:
        return data.masks
    try:
        from ..segmentation import ColourSegmenter
    except ImportError:  # pragma: no cover - the segmentation module ships with the package
        log.warning("no dataset masks and no cellbench.segmentation: skipping region metrics")
        return None
    y = data.y.detach().cpu()
    seg = ColourSegmenter().fit(y, seed=seed)  # uint8 is read a batch at a time
    # per image, so in chunks: full-size memberships of 2,000 images would be 2.1 GB as float32
    return torch.cat([seg.predict(as_float01(y[i:i + 64])) for i in range(0, len(y), 64)])


# --------------------------------------------------------------------------- record builders


def image_records(
    run: str, method: str, per_image: Mapping[str, Mapping[str, np.ndarray]], labels: Sequence[str],
    *, split: str = "test", role: str = "method",
) -> list[Record]:
    """Mean (and 95 % t-interval) of per-image metrics, per region and cell type.

    ``per_image`` is :func:`cellbench.eval.image.image_metrics`'s output. Images with an empty
    region (NaN) are left out of that region's mean; ``n`` counts the images used.
    """
    lab = np.asarray(list(labels))
    recs = []
    for region, metrics in per_image.items():
        for metric in IMAGE_METRICS:
            vals = np.asarray(metrics[metric])
            for ct in _cell_types(labels):
                sel = vals if ct == "all" else vals[lab == ct]
                mean, lo, hi, n = _mean_ci(sel)
                if n == 0:
                    continue
                recs.append(make_record(run, method, metric, mean, split=split, cell_type=ct, n=n,
                                        ci_low=lo, ci_high=hi, region=region, role=role))
    return recs


def colour_records(run: str, method: str, stats, *, split: str = "test", role: str = "method") -> list[Record]:
    """Records of :func:`cellbench.eval.colour.colour_stats` (means/stds carry ``extra.target``)."""
    recs = []
    for s in stats:
        kw = dict(split=split, cell_type=s.cell_type, region=s.region, n=s.n_images, role=role)
        for i, ch in enumerate(("L", "a", "b")):
            px = s.n_pixels
            recs.append(make_record(run, method, f"lab_{ch}_mean", s.mean[i],
                             extra={"target": float(s.target_mean[i]), "pixels": px}, **kw))
            recs.append(make_record(run, method, f"lab_{ch}_std", s.std[i],
                             extra={"target": float(s.target_std[i]), "pixels": px}, **kw))
        recs.append(make_record(run, method, "colour_delta_e", s.delta_e, extra={"pixels": s.n_pixels}, **kw))
        for i, ch in enumerate(("L", "a", "b")):
            if np.isfinite(s.w1[i]):
                recs.append(make_record(run, method, f"w1_{ch}", s.w1[i], extra={"samples": s.n_samples}, **kw))
    return recs


def _prop_record(run: str, method: str, metric: str, p: Proportion, *, split: str, cell_type: str,
                 extra: dict | None = None, role: str = "method") -> Record:
    v, lo, hi = p.percent()
    return make_record(run, method, metric, v, split=split, cell_type=cell_type, n=p.n, ci_low=lo, ci_high=hi,
                       region="all", extra={"k": p.k, **(extra or {})}, role=role)


def _as_np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def proportion_records(
    run: str, method: str, metric: str, success, labels: Sequence[str], *, split: str = "test",
    role: str = "method", extra: dict | None = None,
) -> list[Record]:
    """``metric`` = percent of ``success`` (``(N,)`` bool), overall and per class of ``labels``, with 95 %
    Wilson intervals (:func:`cellbench.eval.agreement.proportion`); ``extra`` goes on the overall row."""
    ok = np.asarray(_as_np(success), dtype=bool).ravel()
    if len(ok) != len(labels):
        raise ValueError(f"{method}: {len(ok)} outcomes for {len(labels)} labels")
    recs = [_prop_record(run, method, metric, proportion(ok), split=split, cell_type="all", extra=extra,
                         role=role)]
    for ct, p in per_class(ok, labels).items():
        recs.append(_prop_record(run, method, metric, p, split=split, cell_type=ct, role=role))
    return recs


def agreement_records(
    run: str, method: str, pred_a, pred_b, labels: Sequence[str], *, metric: str = "agreement",
    split: str = "test", role: str = "method",
) -> list[Record]:
    """``metric`` (agreement or accuracy) = percent of ``pred_a == pred_b``, overall and per true class,
    with 95 % Wilson CIs (percent)."""
    a, b = _as_np(pred_a), _as_np(pred_b)
    if a.shape != b.shape or a.ndim != 1 or len(a) != len(labels):
        raise ValueError(f"{method}: predictions {a.shape}, {b.shape} and {len(labels)} labels do not match")
    return proportion_records(run, method, metric, a == b, labels, split=split, role=role)


def _label_indices(labels: Sequence[str], classes: Sequence[str], what: str,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Class index per label (``-1`` when the classifier does not know the class) and the known mask."""
    index = {c: i for i, c in enumerate(classes)}
    idx = np.array([index.get(lb, -1) for lb in labels], dtype=np.int64)
    known = idx >= 0
    if not known.all():
        missing = sorted({lb for lb in labels if lb not in index})
        log.warning("%s: %d test pairs have classes the classifier does not know (%s); left out of accuracy",
                    what, int((~known).sum()), ", ".join(missing))
    return idx, known


def _accuracy_records(run, method, pred, labels, classes, split, role="method") -> list[Record]:
    idx, known = _label_indices(labels, classes, method)
    if not known.any():
        return []
    lab = [lb for lb, k in zip(labels, known, strict=True) if k]
    pred = _as_np(pred)[known]
    return agreement_records(run, method, pred, idx[known], lab, metric="accuracy", split=split, role=role)


def classifier_records(run: str, y_pred, labels: Sequence[str], classes: Sequence[str], *,
                       split: str = "test") -> list[Record]:
    """The classifier's own accuracy on real y (reference row ``"classifier"``), overall and per class."""
    return _accuracy_records(run, "classifier", y_pred, list(labels), list(classes), split, role="reference")


def class_probabilities(classifier, images: torch.Tensor, *, batch_size: int = 64) -> np.ndarray | None:
    """The classifier's class probabilities ``(N, C)`` (float64 softmax of its logits) on ``images``.

    Uses ``classifier.predict_proba(images)`` when it has one, else ``softmax(classifier.logits(batch))``
    in eval mode without gradients, ``batch_size`` images at a time; ``None`` when it has neither
    (a stand-in with only ``predict``).
    """
    if hasattr(classifier, "predict_proba"):
        return np.asarray(_as_np(classifier.predict_proba(images)), dtype=np.float64)
    if not hasattr(classifier, "logits"):
        return None
    import contextlib

    mode = classifier.eval_mode() if hasattr(classifier, "eval_mode") else contextlib.nullcontext()
    out = []
    with mode, torch.no_grad():
        for i in range(0, len(images), max(1, int(batch_size))):
            logits = classifier.logits(images[i:i + batch_size]).detach().double().cpu()
            out.append(torch.softmax(logits, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(getattr(classifier, "classes", []))))


def consistency_records(
    run: str, method: str, proba_g, proba_y, pred_g, pred_y, labels: Sequence[str], *,
    threshold: float = CONFIDENT, split: str = "test", role: str = "method",
) -> tuple[list[Record], dict[str, np.ndarray]]:
    """``js_consistency`` and ``flip_rate`` of one method, overall and per true class, and their per-image values.

    ``js_consistency`` = mean over pairs of the Jensen-Shannon divergence (bits, base 2) between the
    classifier's probabilities on G(x) and on y, with a 95 % Student-t interval of the mean;
    ``flip_rate`` = percent of the confidently classified pairs (``max(proba_y) >= threshold``) whose
    call on G(x) differs from the call on y, with a 95 % Wilson interval (``n`` = confident pairs,
    ``extra = {"k": flips, "threshold": threshold}``).

    Returns
    -------
    (records, per_image)
        ``per_image`` has ``"js_consistency/all"`` (``(N,)`` bits) and ``"flip_rate/all"`` (1.0 flip,
        0.0 kept, NaN not confident).
    """
    js = js_divergence(proba_g, proba_y)
    flips = confident_flips(pred_g, pred_y, proba_y, threshold=threshold)
    if len(js) != len(labels):
        raise ValueError(f"{method}: {len(js)} probability rows for {len(labels)} labels")
    lab = np.asarray(list(labels))
    recs: list[Record] = []
    for ct in _cell_types(labels):
        sel = np.ones(len(lab), bool) if ct == "all" else lab == ct
        mean, lo, hi, n = _mean_ci(js[sel])
        if n:
            recs.append(make_record(run, method, "js_consistency", mean, split=split, cell_type=ct, n=n,
                                    ci_low=lo, ci_high=hi, region="all", role=role))
        f = flips[sel]
        confident = f[~np.isnan(f)] > 0.5
        if len(confident):
            recs.append(_prop_record(run, method, "flip_rate", proportion(confident), split=split, cell_type=ct,
                                     extra={"threshold": threshold}, role=role))
    return recs, {per_image_key("js_consistency"): js, per_image_key("flip_rate"): flips}


# --------------------------------------------------------------------------- the paired evaluation


@dataclass
class PairedEvaluation:
    """Records of one method's paired evaluation and the per-image values behind them.

    ``per_image`` maps :func:`per_image_key` names (``"agreement/all"``, ``"js_consistency/all"``,
    ``"flip_rate/all"``, ``"accuracy/all"``, ``"<image metric>/<image|wbc>"``) to ``(N,)`` float64
    arrays in test order: agreement/accuracy/flip as 1.0/0.0, NaN where undefined (an empty region,
    an unknown class, a cell the classifier is not confident about).
    """

    records: list[Record]
    per_image: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate_paired(method: str, outputs: torch.Tensor, data: PairedSet, *, run: str, **kwargs: Any) -> list[Record]:
    """Every paired metric of one method on a test set: :func:`paired_evaluation`'s records."""
    return paired_evaluation(method, outputs, data, run=run, **kwargs).records


def paired_evaluation(
    method: str,
    outputs: torch.Tensor,
    data: PairedSet,
    *,
    run: str,
    classifier=None,
    y_pred=None,
    g_pred=None,
    y_proba=None,
    g_proba=None,
    masks: torch.Tensor | None = None,
    seed: int = 0,
    split: str = "test",
    classes: Sequence[str] | None = None,
    colour_samples_per_image: int = 4096,
    confident: float = CONFIDENT,
    role: str = "method",
) -> PairedEvaluation:
    """Every paired metric of one method on a test set, and the per-image values behind them.

    Parameters
    ----------
    method:
        Registry key of the method (``"identity"`` for the raw-X baseline).
    outputs:
        G(x) for the test pairs, ``(N, 3, H, W)`` floats in [0, 1] (same order as ``data``); values
        outside [0, 1] are clipped (with a warning), NaN is an error.
    data:
        The test :class:`~cellbench.data.sets.PairedSet` (``data.y`` is the reference).
    classifier:
        Optional WBC classifier with ``.predict(images) -> LongTensor`` and ``.classes``.
    y_pred, g_pred:
        Cached class predictions on ``data.y`` and ``outputs`` (computed with ``classifier`` when
        missing and a classifier is given).
    y_proba, g_proba:
        Cached ``(N, C)`` class probabilities on ``data.y`` and ``outputs`` (computed with
        :func:`class_probabilities` when missing and the classifier exposes them); with both,
        ``js_consistency`` and ``flip_rate`` are recorded.
    confident:
        The probability on y from which a cell counts as confidently classified (``flip_rate``).
    masks:
        ``(N, H, W)`` region labels of ``data.y``; default: :func:`region_masks` (dataset masks,
        else segmentation of y). Pass them to avoid re-segmenting for every method.
    seed:
        Seeds the pixel subsample of the Wasserstein distances and the segmentation fallback.
    role:
        ``"method"``, or ``"reference"`` for the ceiling (a second rendering y2 of the scenes as
        ``outputs``: no method can do better than the renderer's own noise).

    Returns
    -------
    PairedEvaluation
        ``records``: ``psnr``, ``ssim``, ``ciede2000_mean``, ``ciede2000_p95`` (regions ``image`` and
        ``wbc``; per cell type and ``all``; 95 % t-intervals over images); colour statistics
        (``lab_*``, ``colour_delta_e``, ``w1_*``; regions nucleus, cytoplasm, red_cell, background,
        wbc); with predictions: ``agreement`` and ``accuracy`` in percent with 95 % Wilson CIs,
        overall and per class; with probabilities: ``js_consistency`` and ``flip_rate``
        (:func:`consistency_records`). ``per_image``: the per-image values (see
        :class:`PairedEvaluation`), for paired bootstrap intervals between methods.
    """
    from .colour import ColourAccumulator
    from .image import image_metrics

    out = _check_outputs(outputs, data, method)
    y = data.y.detach().cpu()
    y = y if y.dtype == torch.uint8 else y.float()  # uint8 stays 8-bit: the metrics convert chunk by chunk
    labels = list(data.labels)
    if masks is None:
        masks = region_masks(data, seed=seed)
    recs: list[Record] = []

    # one pass over the images: the CIELAB images of the image metrics feed the colour statistics
    acc = None
    if masks is not None:
        acc = ColourAccumulator(masks, labels, (len(y), y.shape[-2], y.shape[-1]), seed=seed,
                                samples_per_image=colour_samples_per_image)
    per_image = image_metrics(out, y, masks=masks, lab_hook=None if acc is None else acc.update)
    recs += image_records(run, method, per_image, labels, split=split, role=role)
    values = {per_image_key(metric, region): np.asarray(v[metric], dtype=np.float64)
              for region, v in per_image.items() for metric in IMAGE_METRICS}
    if acc is not None:
        recs += colour_records(run, method, acc.result(), split=split, role=role)

    classes = list(classes) if classes is not None else list(getattr(classifier, "classes", []) or [])
    if g_pred is None and classifier is not None:
        # floats for a duck-typed classifier (a WBCClassifier would take uint8 as well)
        g_pred = classifier.predict(as_float01(out))  # G(x) as evaluated (clipped to [0, 1])
    if y_pred is None and classifier is not None:
        y_pred = classifier.predict(as_float01(data.y))
    if g_pred is not None and y_pred is not None:
        recs += agreement_records(run, method, g_pred, y_pred, labels, split=split, role=role)
        values[per_image_key("agreement")] = (_as_np(g_pred) == _as_np(y_pred)).astype(np.float64)
    if g_pred is not None and classes:
        recs += _accuracy_records(run, method, g_pred, labels, classes, split, role)
        idx, known = _label_indices(labels, classes, method)
        correct = (_as_np(g_pred) == idx).astype(np.float64)
        correct[~known] = np.nan
        values[per_image_key("accuracy")] = correct
    if classifier is not None and g_proba is None:
        g_proba = class_probabilities(classifier, as_float01(out))
    if classifier is not None and y_proba is None and g_proba is not None:
        y_proba = class_probabilities(classifier, as_float01(y))
    if g_proba is not None and y_proba is not None and g_pred is not None and y_pred is not None:
        more, v = consistency_records(run, method, g_proba, y_proba, g_pred, y_pred, labels, threshold=confident,
                                      split=split, role=role)
        recs += more
        values.update(v)
    return PairedEvaluation(recs, values)


# --------------------------------------------------------------------------- tests between methods


def mcnemar_records(run: str, per_method_correct: Mapping[str, np.ndarray], *, split: str = "test",
                    basis: str = "agreement") -> list[Record]:
    """Exact McNemar tests between every two methods (metric ``mcnemar_p``).

    Parameters
    ----------
    per_method_correct:
        ``{method: (N,) bool}``: per test pair, whether the method succeeded (``basis``:
        ``"agreement"`` = classifier(G(x)) == classifier(y), or ``"accuracy"``), same pairs and
        order for every method.

    Returns
    -------
    list[Record]
        One record per ordered pair (A vs B and B vs A, same p-value) so a report can look either
        way: ``value`` = two-sided p-value, ``extra = {"vs": B, "statistic": min(b, c), "b": pairs only
        A got right, "c": pairs only B got right, "basis": basis}``, ``higher_is_better`` None.
    """
    names = list(per_method_correct)
    arrays = {m: np.asarray(_as_np(per_method_correct[m]), dtype=bool).ravel() for m in names}
    sizes = {m: len(a) for m, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"per-method outcomes differ in length: {sizes}; McNemar needs the same pairs")
    recs = []
    for a, b in itertools.permutations(names, 2):
        r = mcnemar_exact(arrays[a], arrays[b])
        recs.append(make_record(run, a, "mcnemar_p", r.pvalue, split=split, n=sizes[a],
                         extra={"vs": b, "statistic": r.statistic, "b": r.b, "c": r.c, "basis": basis}))
    return recs


def paired_difference_records(
    run: str, per_image: Mapping[str, Mapping[str, np.ndarray]], *, resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95, seed: int = 0, split: str = "test",
    keys: Sequence[tuple[str, str]] = PAIRED_DIFF_KEYS,
) -> list[Record]:
    """Paired bootstrap intervals of the difference of every per-image metric between every two methods.

    Parameters
    ----------
    per_image:
        ``{method: {per_image_key: (N,) values}}`` (:attr:`PairedEvaluation.per_image`), the same
        test images in the same order for every method.
    resamples, confidence, seed:
        Of :func:`cellbench.eval.agreement.paired_bootstrap_difference` (the same seed, hence the same
        resampled images, for every pair and metric).
    keys:
        ``(metric, region)`` pairs to compare (those present for both methods are used).

    Returns
    -------
    list[Record]
        Metric ``paired_diff``, one record per ordered pair (A vs B and B vs A, the sign and the
        interval flipped) and per metric: ``value`` = mean(A) - mean(B) in the metric's unit
        (percentage points for percent metrics), ``ci_low``/``ci_high`` = the percentile interval,
        ``n`` = images used, ``region`` = the metric's region, ``extra = {"vs": B, "metric", "unit",
        "higher_is_better", "excludes_zero", "mean", "vs_mean", "resamples", "confidence", "seed"}``.
    """
    names = list(per_image)
    recs: list[Record] = []
    for a, b in itertools.combinations(names, 2):
        for metric, region in keys:
            key = per_image_key(metric, region)
            if key not in per_image[a] or key not in per_image[b]:
                continue
            va, vb = per_image[a][key], per_image[b][key]
            if len(va) != len(vb):
                raise ValueError(f"per-image {key}: {a} has {len(va)} values, {b} {len(vb)}; the same images needed")
            spec = METRICS.get(metric)
            scale, unit = (100.0, "pp") if spec.unit == "%" else (1.0, spec.unit)
            d = paired_bootstrap_difference(va, vb, resamples=resamples, confidence=confidence, seed=seed)
            if d.n == 0:
                continue
            for m, other, sign in ((a, b, 1.0), (b, a, -1.0)):
                lo, hi = sorted((sign * scale * d.ci_low, sign * scale * d.ci_high))
                mean, vs_mean = (d.mean_a, d.mean_b) if sign > 0 else (d.mean_b, d.mean_a)
                recs.append(make_record(run, m, "paired_diff", sign * scale * d.value, split=split, n=d.n,
                                        ci_low=lo, ci_high=hi, region=region, extra={
                                            "vs": other, "metric": metric, "unit": unit,
                                            "higher_is_better": spec.higher_is_better,
                                            "excludes_zero": d.excludes_zero, "mean": scale * mean,
                                            "vs_mean": scale * vs_mean, "resamples": d.resamples,
                                            "confidence": confidence, "seed": seed}))
    return recs


# --------------------------------------------------------------------------- realism and speed


def realism_records(
    run: str,
    method: str,
    real: torch.Tensor | None = None,
    fake: torch.Tensor | None = None,
    *,
    real_features=None,
    fake_features=None,
    seed: int = 0,
    split: str = "test",
    c2st_kwargs: Mapping[str, Any] | None = None,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
) -> list[Record]:
    """``c2st_accuracy`` (percent, 95 % Wilson CI) from images and ``fid``/``kid`` from features.

    Parameters
    ----------
    real, fake:
        y and G(x), ``(N, 3, H, W)`` in [0, 1] (pairs in the same order): the C2ST runs when both
        are given.
    real_features, fake_features:
        ``(N, D)`` penultimate features of the WBC classifier on y and G(x): FID and KID run when
        both are given. KID's subset size is ``min(kid_subset_size, N)``.
    """
    from .realism import c2st, fid, kid

    recs = []
    if real is not None and fake is not None:
        r = c2st(real, fake, seed=seed, **dict(c2st_kwargs or {}))
        recs.append(make_record(run, method, "c2st_accuracy", r.accuracy, split=split, n=r.n_test, ci_low=r.ci_low,
                         ci_high=r.ci_high,
                         extra={"n_train": r.n_train, "epochs": r.epochs, "size": r.size}))
    if real_features is not None and fake_features is not None:
        n = min(len(real_features), len(fake_features))
        d = int(np.shape(real_features)[1])
        recs.append(make_record(run, method, "fid", fid(real_features, fake_features), split=split, n=n,
                         extra={"dims": d}))
        mean, std, s = kid(real_features, fake_features, subset_size=kid_subset_size, n_subsets=kid_subsets,
                           seed=seed)
        recs.append(make_record(run, method, "kid", mean, split=split, n=n,
                         extra={"kid_std": std, "subset_size": s, "subsets": kid_subsets, "dims": d}))
    return recs


def speed_records(run: str, method: str, profile: Mapping[str, Any], *, split: str = "test") -> list[Record]:
    """Records of :func:`cellbench.eval.profiling.profile_normalizer`'s result."""
    base = {"device": profile.get("device"), "device_name": profile.get("device_name"),
            "image_size": profile.get("image_size"), "truncated": profile.get("truncated", False)}
    recs = [
        make_record(run, method, "latency_ms_b1", profile["latency_ms_b1"], split=split,
             n=profile.get("n_latency", 0), extra=dict(base)),
        make_record(run, method, "latency_ms_b1_p90", profile["latency_ms_b1_p90"], split=split,
             n=profile.get("n_latency", 0), extra=dict(base)),
        make_record(run, method, "throughput_ips", profile["throughput_ips"], split=split,
             extra={**base, "batch_size": profile.get("batch_size"),
                    "by_batch": {str(k): v for k, v in (profile.get("throughput_by_batch") or {}).items()}}),
        make_record(run, method, "peak_mem_mb", profile["peak_mem_mb"], split=split, extra=dict(base)),
    ]
    return recs


def fit_records(run: str, method: str, seconds: float, *, n: int) -> list[Record]:
    """``fit_seconds``: wall-clock time to fit the method on ``n`` training images."""
    return [make_record(run, method, "fit_seconds", seconds, split="train", n=n)]


def passthrough_records(run: str, method: str, count: int, *, n: int, split: str = "test") -> list[Record]:
    """``passthrough_images``: test images the method returned unchanged (its ``passthrough_count``)."""
    return [make_record(run, method, "passthrough_images", count, split=split, n=n)]


def accuracy_gain_records(run: str, accuracy: Mapping[str, Record], *, baseline: str = "identity") -> list[Record]:
    """``accuracy_gain`` (percentage points) of each method's overall accuracy over ``baseline``'s."""
    base = accuracy[baseline].value
    return [make_record(run, m, "accuracy_gain", r.value - base, n=r.n, extra={"baseline": f"{baseline} (raw X)"})
            for m, r in accuracy.items()]


def unpaired_colour_records(run: str, method: str, outputs: torch.Tensor, out_labels: Sequence[str],
                            target: torch.Tensor, target_labels: Sequence[str], *, seed: int = 0,
                            samples: int = 20000) -> list[Record]:
    """Colour statistics of G(x) against Y when nothing is paired.

    Each side is segmented on its own (:class:`cellbench.segmentation.ColourSegmenter`, fitted on
    that side's images); per cell type present on both sides (and ``"all"``) and per region,
    pixels are pooled, and we report the CIEDE2000 between the mean CIELAB colours
    (``colour_delta_e``) and the Wasserstein-1 distance of each channel (``w1_L``, ``w1_a``,
    ``w1_b``, on a seeded subsample of ``samples`` pixels per side).
    """
    from scipy.stats import wasserstein_distance

    from ..segmentation import ColourSegmenter
    from .colour import REGIONS
    from .image import ciede2000, rgb_to_lab

    rng = np.random.default_rng(seed)
    sides = []
    for imgs, labels in ((outputs, out_labels), (target, target_labels)):
        imgs = as_float01(imgs)
        masks = ColourSegmenter().fit(imgs, seed=seed).predict(imgs).numpy()
        lab = rgb_to_lab(imgs.float()).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
        sides.append((lab, masks, np.asarray(labels)))
    records: list[Record] = []
    for ct in ["all", *sorted(set(out_labels) & set(target_labels))]:
        for region, values in REGIONS.items():
            px = []
            for lab, masks, labels in sides:
                sel = np.ones(len(labels), bool) if ct == "all" else labels == ct
                px.append(lab[sel][np.isin(masks[sel], values)])
            if min(len(px[0]), len(px[1])) < 50:
                continue
            means = [p.mean(axis=0) for p in px]
            de = float(ciede2000(torch.tensor(means[0]).view(1, 3), torch.tensor(means[1]).view(1, 3), dim=1)[0])
            kw = dict(cell_type=ct, region=region, n=int(sum(1 for lb in out_labels if ct in ("all", lb))))
            records.append(make_record(run, method, "colour_delta_e", de, **kw, extra={
                "pixels": int(len(px[0])), "target_pixels": int(len(px[1])), "unpaired": True}))
            sub = [p[rng.choice(len(p), size=min(samples, len(p)), replace=False)] for p in px]
            for i, ch in enumerate("Lab"):
                records.append(make_record(run, method, f"lab_{ch}_mean", float(means[0][i]),
                                           extra={"target": float(means[1][i])}, **kw))
                records.append(make_record(run, method, f"w1_{ch}",
                                           float(wasserstein_distance(sub[0][:, i], sub[1][:, i])), **kw))
    return records
