"""evaluate_paired and the record builders: names, regions, units, directions and values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from cellbench.data.sets import PairedSet
from cellbench.eval.evaluate import (
    classifier_records,
    evaluate_paired,
    mcnemar_records,
    realism_records,
    region_masks,
    speed_records,
)
from cellbench.eval.metrics import METRICS
from cellbench.results import load_results, save_results

CLASSES = ["eosinophil", "lymphocyte", "neutrophil"]


class MeanColourClassifier:
    """Class = argmax of the mean RGB (a stand-in with .predict and .classes)."""

    classes = CLASSES

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return images.mean(dim=(2, 3)).argmax(1)


def make_set(n: int = 12, size: int = 32, seed: int = 0, with_masks: bool = True) -> PairedSet:
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, 3, size, size, generator=g) * 0.6 + 0.2
    x = (y * 0.8 + 0.1).clamp(0, 1)
    labels = [CLASSES[i % 3] for i in range(n)]
    masks = None
    if with_masks:
        masks = torch.zeros(n, size, size, dtype=torch.uint8)
        masks[:, 8:24, 8:24] = 3
        masks[:, 12:20, 12:20] = 4
        masks[:, :4, :4] = 1
    y2 = (y + 0.02 * torch.randn(y.shape, generator=g)).clamp(0, 1)
    return PairedSet(x=x, y=y, labels=labels, masks=masks, y2=y2)


def test_evaluate_paired_records():
    data = make_set()
    clf = MeanColourClassifier()
    out = (data.y + 0.05).clamp(0, 1)
    recs = evaluate_paired("affine", out, data, run="r1", classifier=clf)
    assert all(r.run == "r1" and r.method == "affine" and r.split == "test" for r in recs)
    for r in recs:  # directions and units from the registry
        spec = METRICS.get(r.metric)
        assert r.higher_is_better is spec.higher_is_better and r.unit == spec.unit
    by = {(r.metric, r.region, r.cell_type): r for r in recs}
    for m in ("psnr", "ssim", "ciede2000_mean", "ciede2000_p95"):
        for region in ("image", "wbc"):
            for ct in ["all", *CLASSES]:
                assert (m, region, ct) in by
    # the PSNR record is the mean over images of skimage's PSNR
    yy, oo = data.y.permute(0, 2, 3, 1).double().numpy(), out.permute(0, 2, 3, 1).double().numpy()
    ref = np.mean([peak_signal_noise_ratio(yy[i], oo[i], data_range=1.0) for i in range(12)])
    r = by[("psnr", "image", "all")]
    assert r.value == pytest.approx(ref, abs=1e-6) and r.n == 12 and r.ci_low < r.value < r.ci_high
    assert by[("psnr", "image", "eosinophil")].n == 4
    # colour statistics per region
    for m in ("lab_L_mean", "lab_b_std", "colour_delta_e", "w1_a"):
        for region in ("nucleus", "cytoplasm", "red_cell", "background", "wbc"):
            assert (m, region, "all") in by
    assert "target" in by[("lab_L_mean", "nucleus", "all")].extra
    # agreement and accuracy in percent, with Wilson CIs
    g_pred, y_pred = clf.predict(out), clf.predict(data.y)
    agree = by[("agreement", "all", "all")]
    assert agree.value == pytest.approx(100 * float((g_pred == y_pred).float().mean()))
    assert agree.unit == "%" and agree.ci_low <= agree.value <= agree.ci_high and agree.n == 12
    idx = torch.tensor([CLASSES.index(lb) for lb in data.labels])
    assert by[("accuracy", "all", "all")].value == pytest.approx(100 * float((g_pred == idx).float().mean()))
    assert ("agreement", "all", "lymphocyte") in by
    assert {r.role for r in recs} == {"method"}


def test_cached_predictions_skip_the_classifier_and_reference_roles():
    data = make_set()
    clf = MeanColourClassifier()
    y_pred = clf.predict(data.y)
    y2_pred = clf.predict(data.y2)
    clf.calls = 0
    # the ceiling: the second rendering y2 evaluated like a method, as a reference row
    ceil = evaluate_paired("ceiling", data.y2, data, run="r", classifier=clf, y_pred=y_pred, g_pred=y2_pred,
                           role="reference")
    assert clf.calls == 0  # every prediction was given
    assert {r.role for r in ceil} == {"reference"} and {"agreement", "accuracy", "psnr"} <= {r.metric for r in ceil}
    c = next(r for r in ceil if r.metric == "agreement" and r.cell_type == "all")
    assert c.value == pytest.approx(100 * float((y_pred == y2_pred).float().mean()))
    cr = classifier_records("r", y_pred, data.labels, CLASSES)
    assert {r.method for r in cr} == {"classifier"} and {r.cell_type for r in cr} == {"all", *CLASSES}
    assert {r.role for r in cr} == {"reference"}


def test_without_masks_uses_segmentation_and_checks_outputs():
    data = make_set(with_masks=False)
    m = region_masks(data, seed=0)
    assert m is not None and tuple(m.shape) == (12, 32, 32)
    recs = evaluate_paired("identity", data.x, data, run="r", masks=m)
    assert any(r.metric == "psnr" and r.region == "image" for r in recs)
    with pytest.raises(ValueError, match="do not match"):
        evaluate_paired("bad", data.x[:, :, :16], data, run="r")
    with pytest.raises(ValueError, match="NaN"):
        evaluate_paired("bad", data.x * float("nan"), data, run="r")


def test_mcnemar_records_both_directions():
    correct = {"a": np.r_[np.ones(9, bool), np.zeros(2, bool)],
               "b": np.r_[np.zeros(9, bool), np.ones(2, bool)],
               "c": np.ones(11, bool)}
    recs = mcnemar_records("r", correct)
    assert len(recs) == 6 and all(r.metric == "mcnemar_p" and r.higher_is_better is None for r in recs)
    ab = next(r for r in recs if r.method == "a" and r.extra["vs"] == "b")
    ba = next(r for r in recs if r.method == "b" and r.extra["vs"] == "a")
    assert ab.value == ba.value == pytest.approx(134 / 2048)
    assert (ab.extra["b"], ab.extra["c"], ab.extra["statistic"]) == (9, 2, 2)
    with pytest.raises(ValueError):
        mcnemar_records("r", {"a": np.ones(3, bool), "b": np.ones(4, bool)})


def test_realism_and_speed_records_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(0)
    real = torch.rand(16, 3, 32, 32, generator=g)
    feats = np.random.default_rng(0).normal(size=(16, 5))
    recs = realism_records("r", "hm", real, real.flip(-1), real_features=feats, fake_features=feats + 1.0,
                           c2st_kwargs={"size": 16, "epochs": 2})
    by = {r.metric: r for r in recs}
    assert set(by) == {"c2st_accuracy", "fid", "kid"}
    assert by["fid"].value == pytest.approx(5.0, rel=1e-9)  # |shift|^2, same covariance
    assert by["kid"].extra["subset_size"] == 16 and "kid_std" in by["kid"].extra
    assert by["c2st_accuracy"].unit == "%" and by["c2st_accuracy"].higher_is_better is False
    prof = {"latency_ms_b1": 2.0, "latency_ms_b1_p90": 3.0, "throughput_ips": 500.0, "batch_size": 8,
            "peak_mem_mb": 12.0, "device": "cpu", "device_name": "x86", "image_size": 256, "n_latency": 10,
            "throughput_by_batch": {1: 400.0, 8: 500.0}}
    srecs = speed_records("r", "hm", prof)
    speed = {"latency_ms_b1", "latency_ms_b1_p90", "throughput_ips", "peak_mem_mb"}
    assert {r.metric for r in srecs} == speed
    thr = next(r for r in srecs if r.metric == "throughput_ips")
    assert thr.extra["batch_size"] == 8 and thr.extra["image_size"] == 256 and thr.higher_is_better is True
    all_recs = recs + srecs + evaluate_paired("identity", make_set().x, make_set(), run="r")
    save_results(tmp_path, all_recs, {"config": {}}, metrics=METRICS)
    loaded, _ = load_results(tmp_path)
    assert len(loaded) == len(all_recs)
    json.loads((tmp_path / "results.json").read_text())


def test_out_of_range_outputs_are_clipped_on_a_copy(caplog):
    data = make_set(n=6)
    out = data.y * 2.0 - 0.5  # spans [-0.1, 1.1]
    before = out.clone()
    recs = evaluate_paired("overshoot", out, data, run="r")
    assert torch.equal(out, before)  # the caller's tensor is untouched
    assert "clipping" in caplog.text
    clipped = evaluate_paired("clipped", out.clamp(0, 1), data, run="r")
    key = lambda r: (r.metric, r.region, r.cell_type)  # noqa: E731
    a = {key(r): r.value for r in recs}
    b = {key(r): r.value for r in clipped}
    assert a == b
