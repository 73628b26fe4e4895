"""Turn a method's outputs into result records: every paired metric, McNemar, realism, speed.

The functions here glue the pure metrics (:mod:`.image`, :mod:`.colour`, :mod:`.agreement`,
:mod:`.realism`, :mod:`.profiling`) to the results schema (:class:`cellbench.results.Record`)
with the names, regions and units of ``docs/run-folder.md``; every record's
``higher_is_better`` comes from :data:`cellbench.eval.metrics.METRICS`.

Typical use (the benchmark runner)::

    y_pred = clf.predict(test.y)                      # once, cached
    masks = region_masks(test, seed=0)                # dataset masks, else segmentation of y
    recs = []
    for name, out in outputs.items():                 # out = normalizer.transform(test.x)
        g_pred = clf.predict(out)
        recs += evaluate_paired(name, out, test, run=run, classifier=clf, y_pred=y_pred,
                                g_pred=g_pred, masks=masks)
        correct[name] = (g_pred == y_pred).numpy()
    recs += ceiling_records(run, test, y_pred=y_pred, y2_pred=clf.predict(test.y2), classes=clf.classes)
    recs += mcnemar_records(run, correct)
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.sets import PairedSet
from ..results import Record
from .agreement import Proportion, mcnemar_exact, per_class, proportion
from .metrics import METRICS

log = logging.getLogger(__name__)

__all__ = [
    "evaluate_paired",
    "region_masks",
    "image_records",
    "colour_records",
    "agreement_records",
    "ceiling_records",
    "classifier_records",
    "mcnemar_records",
    "realism_records",
    "speed_records",
]

IMAGE_METRICS = ("psnr", "ssim", "ciede2000_mean", "ciede2000_p95")


def _rec(run: str, method: str, metric: str, value: float, **kw: Any) -> Record:
    spec = METRICS.get(metric)
    return Record(
        run=run, method=method, metric=metric, value=float(value), unit=spec.unit,
        higher_is_better=spec.higher_is_better, **kw,
    )


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
    y = data.y.detach().float().cpu()
    return ColourSegmenter().fit(y, seed=seed).predict(y)


# --------------------------------------------------------------------------- record builders


def image_records(
    run: str, method: str, per_image: Mapping[str, Mapping[str, np.ndarray]], labels: Sequence[str],
    *, split: str = "test",
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
                recs.append(_rec(run, method, metric, mean, split=split, cell_type=ct, n=n,
                                 ci_low=lo, ci_high=hi, region=region))
    return recs


def colour_records(run: str, method: str, stats, *, split: str = "test") -> list[Record]:
    """Records of :func:`cellbench.eval.colour.colour_stats` (means/stds carry ``extra.target``)."""
    recs = []
    for s in stats:
        kw = dict(split=split, cell_type=s.cell_type, region=s.region, n=s.n_images)
        for i, ch in enumerate(("L", "a", "b")):
            px = s.n_pixels
            recs.append(_rec(run, method, f"lab_{ch}_mean", s.mean[i],
                             extra={"target": float(s.target_mean[i]), "pixels": px}, **kw))
            recs.append(_rec(run, method, f"lab_{ch}_std", s.std[i],
                             extra={"target": float(s.target_std[i]), "pixels": px}, **kw))
        recs.append(_rec(run, method, "colour_delta_e", s.delta_e, extra={"pixels": s.n_pixels}, **kw))
        for i, ch in enumerate(("L", "a", "b")):
            if np.isfinite(s.w1[i]):
                recs.append(_rec(run, method, f"w1_{ch}", s.w1[i], extra={"samples": s.n_samples}, **kw))
    return recs


def _prop_record(run: str, method: str, metric: str, p: Proportion, *, split: str, cell_type: str,
                 extra: dict | None = None) -> Record:
    v, lo, hi = p.percent()
    return _rec(run, method, metric, v, split=split, cell_type=cell_type, n=p.n, ci_low=lo, ci_high=hi,
                region="all", extra={"k": p.k, **(extra or {})})


def _as_np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def agreement_records(
    run: str, method: str, pred_a, pred_b, labels: Sequence[str], *, metric: str = "agreement",
    split: str = "test",
) -> list[Record]:
    """``metric`` (agreement or accuracy) = percent of ``pred_a == pred_b``, overall and per true class,
    with 95 % Wilson CIs (percent)."""
    a, b = _as_np(pred_a), _as_np(pred_b)
    if a.shape != b.shape or a.ndim != 1 or len(a) != len(labels):
        raise ValueError(f"{method}: predictions {a.shape}, {b.shape} and {len(labels)} labels do not match")
    ok = a == b
    recs = [_prop_record(run, method, metric, proportion(ok), split=split, cell_type="all")]
    for ct, p in per_class(ok, labels).items():
        recs.append(_prop_record(run, method, metric, p, split=split, cell_type=ct))
    return recs


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


def _accuracy_records(run, method, pred, labels, classes, split) -> list[Record]:
    idx, known = _label_indices(labels, classes, method)
    if not known.any():
        return []
    lab = [lb for lb, k in zip(labels, known, strict=True) if k]
    pred = _as_np(pred)[known]
    return agreement_records(run, method, pred, idx[known], lab, metric="accuracy", split=split)


def classifier_records(run: str, y_pred, labels: Sequence[str], classes: Sequence[str], *,
                       split: str = "test") -> list[Record]:
    """The classifier's own accuracy on real y (method ``"classifier"``), overall and per class."""
    return _accuracy_records(run, "classifier", y_pred, list(labels), list(classes), split)


def ceiling_records(
    run: str, data: PairedSet, *, classifier=None, y_pred=None, y2_pred=None,
    classes: Sequence[str] | None = None, split: str = "test",
) -> list[Record]:
    """The ceiling (method ``"ceiling"``): agreement of the classifier on y and on a second rendering
    y2 of the same scenes (no method can do better than the renderer's own noise), overall and per
    class, plus its accuracy on y2. Empty when the data has no y2 and no ``y2_pred`` is given."""
    if y2_pred is None:
        if data.y2 is None or classifier is None:
            return []
        y2_pred = classifier.predict(data.y2)
    if y_pred is None:
        if classifier is None:
            raise ValueError("ceiling_records needs y_pred or a classifier")
        y_pred = classifier.predict(data.y)
    recs = agreement_records(run, "ceiling", y2_pred, y_pred, data.labels, split=split)
    classes = classes if classes is not None else getattr(classifier, "classes", None)
    if classes is not None:
        recs += _accuracy_records(run, "ceiling", y2_pred, data.labels, list(classes), split)
    return recs


# --------------------------------------------------------------------------- the paired evaluation


def evaluate_paired(
    method: str,
    outputs: torch.Tensor,
    data: PairedSet,
    *,
    run: str,
    classifier=None,
    y_pred=None,
    y2_pred=None,
    g_pred=None,
    masks: torch.Tensor | None = None,
    seed: int = 0,
    split: str = "test",
    classes: Sequence[str] | None = None,
    colour_samples_per_image: int = 4096,
) -> list[Record]:
    """Every paired metric of one method on a test set.

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
    y_pred, y2_pred, g_pred:
        Cached class predictions on ``data.y``, ``data.y2`` and ``outputs`` (computed with
        ``classifier`` when missing and a classifier is given).
    masks:
        ``(N, H, W)`` region labels of ``data.y``; default: :func:`region_masks` (dataset masks,
        else segmentation of y). Pass them to avoid re-segmenting for every method.
    seed:
        Seeds the pixel subsample of the Wasserstein distances and the segmentation fallback.

    Returns
    -------
    list[Record]
        ``psnr``, ``ssim``, ``ciede2000_mean``, ``ciede2000_p95`` (regions ``image`` and ``wbc``; per
        cell type and ``all``; 95 % t-intervals over images); colour statistics (``lab_*``,
        ``colour_delta_e``, ``w1_*``; regions nucleus, cytoplasm, red_cell, background, wbc); with
        predictions: ``agreement`` and ``accuracy`` in percent with 95 % Wilson CIs, overall and per
        class; with ``y2_pred`` given: the ``"ceiling"`` records too (pass it in one call only, or use
        :func:`ceiling_records`).
    """
    from .colour import ColourAccumulator
    from .image import image_metrics

    out = _check_outputs(outputs, data, method)
    y = data.y.detach().float().cpu()
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
    recs += image_records(run, method, per_image, labels, split=split)
    if acc is not None:
        recs += colour_records(run, method, acc.result(), split=split)

    classes = list(classes) if classes is not None else list(getattr(classifier, "classes", []) or [])
    if g_pred is None and classifier is not None:
        g_pred = classifier.predict(out)  # G(x) as evaluated (clipped to [0, 1])
    if y_pred is None and classifier is not None:
        y_pred = classifier.predict(data.y)
    if g_pred is not None and y_pred is not None:
        recs += agreement_records(run, method, g_pred, y_pred, labels, split=split)
    if g_pred is not None and classes:
        recs += _accuracy_records(run, method, g_pred, labels, classes, split)
    if y2_pred is not None:
        recs += ceiling_records(run, data, y_pred=y_pred, y2_pred=y2_pred, classes=classes or None,
                                split=split)
    return recs


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
        recs.append(_rec(run, a, "mcnemar_p", r.pvalue, split=split, n=sizes[a],
                         extra={"vs": b, "statistic": r.statistic, "b": r.b, "c": r.c, "basis": basis}))
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
        recs.append(_rec(run, method, "c2st_accuracy", r.accuracy, split=split, n=r.n_test, ci_low=r.ci_low,
                         ci_high=r.ci_high,
                         extra={"n_train": r.n_train, "epochs": r.epochs, "size": r.size}))
    if real_features is not None and fake_features is not None:
        n = min(len(real_features), len(fake_features))
        d = int(np.shape(real_features)[1])
        recs.append(_rec(run, method, "fid", fid(real_features, fake_features), split=split, n=n,
                         extra={"dims": d}))
        mean, std, s = kid(real_features, fake_features, subset_size=kid_subset_size, n_subsets=kid_subsets,
                           seed=seed)
        recs.append(_rec(run, method, "kid", mean, split=split, n=n,
                         extra={"kid_std": std, "subset_size": s, "subsets": kid_subsets, "dims": d}))
    return recs


def speed_records(run: str, method: str, profile: Mapping[str, Any], *, split: str = "test") -> list[Record]:
    """Records of :func:`cellbench.eval.profiling.profile_normalizer`'s result."""
    base = {"device": profile.get("device"), "device_name": profile.get("device_name"),
            "image_size": profile.get("image_size"), "truncated": profile.get("truncated", False)}
    recs = [
        _rec(run, method, "latency_ms_b1", profile["latency_ms_b1"], split=split,
             n=profile.get("n_latency", 0), extra=dict(base)),
        _rec(run, method, "latency_ms_b1_p90", profile["latency_ms_b1_p90"], split=split,
             n=profile.get("n_latency", 0), extra=dict(base)),
        _rec(run, method, "throughput_ips", profile["throughput_ips"], split=split,
             extra={**base, "batch_size": profile.get("batch_size"),
                    "by_batch": {str(k): v for k, v in (profile.get("throughput_by_batch") or {}).items()}}),
        _rec(run, method, "peak_mem_mb", profile["peak_mem_mb"], split=split, extra=dict(base)),
    ]
    return recs
