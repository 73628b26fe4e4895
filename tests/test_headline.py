"""A headline that ranks (issue #14): prediction consistency, paired bootstrap differences, rank stability.

Reference values come from scipy (Jensen-Shannon, Kendall's tau), from hand counts (flip rate,
tau on small rankings) and from synthetic data with a known difference (bootstrap).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from cellbench.eval.agreement import (
    confident_flips,
    flip_rate,
    js_divergence,
    kendall_tau,
    paired_bootstrap_difference,
    wilson_interval,
)
from cellbench.eval.evaluate import consistency_records, paired_difference_records, paired_evaluation
from cellbench.eval.metrics import METRICS, make_record
from cellbench.results import save_results

# --------------------------------------------------------------------------- Jensen-Shannon and flips


def test_js_divergence_equals_scipy_squared_base_2():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(8, 0.3), size=200)
    q = rng.dirichlet(np.full(8, 0.3), size=200)
    p[:20, :4] = 0.0  # zeros: 0 log 0 = 0
    ref = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q, strict=True)])
    assert js_divergence(p, q) == pytest.approx(ref, abs=1e-12)
    # unnormalised rows are normalised, as scipy does
    assert js_divergence(3 * p, q) == pytest.approx(ref, abs=1e-12)
    # bounds: identical -> 0, disjoint support -> 1 bit; symmetric
    eye = np.eye(4)
    assert js_divergence(eye, eye) == pytest.approx(np.zeros(4), abs=1e-15)
    assert js_divergence(eye, np.roll(eye, 1, axis=0)) == pytest.approx(np.ones(4), abs=1e-15)
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p), abs=1e-15)
    with pytest.raises(ValueError, match="differ"):
        js_divergence(p, q[:5])
    with pytest.raises(ValueError, match="finite"):
        js_divergence(-p, q)


def test_flip_rate_by_hand():
    # 6 cells; the classifier is confident (>= 0.9) on y for cells 0, 1, 3, 5; G(x) flips cells 1, 2, 5
    proba_y = np.array([[0.95, 0.05], [0.05, 0.95], [0.6, 0.4], [0.9, 0.1], [0.5, 0.5], [0.02, 0.98]])
    pred_y = proba_y.argmax(1)
    pred_g = pred_y.copy()
    pred_g[[1, 2, 5]] = 1 - pred_g[[1, 2, 5]]
    flips = confident_flips(pred_g, pred_y, proba_y, threshold=0.9)
    assert np.array_equal(np.isnan(flips), [False, False, True, False, True, False])
    assert flips[[0, 1, 3, 5]].tolist() == [0.0, 1.0, 0.0, 1.0]
    p = flip_rate(pred_g, pred_y, proba_y, threshold=0.9)
    assert (p.k, p.n, p.value) == (2, 4, 0.5)  # cell 2 flipped but was not confident
    assert (p.ci_low, p.ci_high) == wilson_interval(2, 4)
    assert flip_rate(pred_g, pred_y, proba_y, threshold=0.5).n == 6
    with pytest.raises(ValueError, match="threshold"):
        flip_rate(pred_g, pred_y, proba_y, threshold=0.0)


# --------------------------------------------------------------------------- the paired bootstrap


def test_bootstrap_contains_the_true_difference_and_excludes_zero_when_large():
    rng = np.random.default_rng(1)
    n = 400
    shared = rng.normal(0.0, 3.0, n)  # image difficulty, common to both methods
    b = 10.0 + shared + rng.normal(0.0, 1.0, n)
    a = 10.5 + shared + rng.normal(0.0, 1.0, n)  # true difference 0.5
    d = paired_bootstrap_difference(a, b, seed=0)
    assert d.ci_low < 0.5 < d.ci_high
    assert d.excludes_zero and d.ci_low > 0
    assert d.value == pytest.approx(a.mean() - b.mean(), abs=1e-12) and d.n == n and d.resamples == 2000
    # paired: the width is that of the per-image differences' mean (normal theory, 2 x 1.96 x sd(a - b) / sqrt(n)),
    # less than half of what two independent samples would give (the shared difficulty cancels)
    width = d.ci_high - d.ci_low
    assert width == pytest.approx(2 * 1.96 * np.std(a - b, ddof=1) / math.sqrt(n), rel=0.15)
    assert width < 0.5 * 2 * 1.96 * math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / n)


def test_bootstrap_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(5)
    hits_true, hits_zero = 0, 0
    reps = 200
    for i in range(reps):
        shared = rng.normal(0.0, 3.0, 200)
        b = shared + rng.normal(0.0, 1.0, 200)
        a = shared + 0.3 + rng.normal(0.0, 1.0, 200)
        d = paired_bootstrap_difference(a, b, seed=i, resamples=500)
        hits_true += d.ci_low <= 0.3 <= d.ci_high
        z = paired_bootstrap_difference(b + rng.normal(0.0, 1.0, 200), b, seed=i, resamples=500)
        hits_zero += z.ci_low <= 0.0 <= z.ci_high
    # nominal 95 %; 200 replications give a standard error of about 1.5 points
    assert 0.90 <= hits_true / reps <= 0.99 and 0.90 <= hits_zero / reps <= 0.99


def test_bootstrap_is_seeded_and_paired():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=300), rng.normal(size=300)
    assert paired_bootstrap_difference(a, b, seed=3) == paired_bootstrap_difference(a, b, seed=3)
    assert paired_bootstrap_difference(a, b, seed=3) != paired_bootstrap_difference(a, b, seed=4)
    # a constant offset between A and B: every resample (same indices for both) gives the same difference
    base = rng.normal(5.0, 4.0, 300)
    d = paired_bootstrap_difference(base + 0.25, base, seed=0)
    assert d.value == pytest.approx(0.25, abs=1e-12)
    assert d.ci_high - d.ci_low < 1e-12 and d.ci_low == pytest.approx(0.25, abs=1e-12)


def test_bootstrap_leaves_out_missing_values():
    a = np.array([1.0, 2.0, np.nan, 4.0, np.inf])
    b = np.array([0.0, 1.0, 3.0, np.nan, 1.0])
    d = paired_bootstrap_difference(a, b, seed=0)
    assert d.n == 2 and d.value == pytest.approx(1.0)
    assert math.isnan(paired_bootstrap_difference([np.nan], [1.0]).value)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap_difference([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- Kendall's tau


def test_kendall_tau_known_rankings():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]).tau == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]).tau == pytest.approx(-1.0)
    # one adjacent swap among 4 items: 5 concordant, 1 discordant of 6 pairs -> (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]).tau == pytest.approx(4 / 6)
    # 5 items, two swaps: 8 concordant, 2 discordant of 10 -> 0.6; exact p from scipy
    r = kendall_tau([1, 2, 3, 4, 5], [2, 1, 3, 5, 4])
    assert r.tau == pytest.approx(0.6) and r.n == 5
    from scipy.stats import kendalltau

    assert r.pvalue == pytest.approx(kendalltau([1, 2, 3, 4, 5], [2, 1, 3, 5, 4]).pvalue)
    # every method ties on one side: undefined, not a number
    assert math.isnan(kendall_tau([1, 2, 3], [5, 5, 5]).tau)
    assert kendall_tau([1, 2, np.nan, 3], [1, 2, 9, 3]).n == 3


# --------------------------------------------------------------------------- records


class LogitClassifier:
    """Class scores = the mean RGB, times 20 (a stand-in with .logits, .predict and .classes)."""

    classes = ["eosinophil", "lymphocyte", "neutrophil"]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3)) * 20.0

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(1)


def _set(n=12, size=24, seed=0):
    from cellbench.data.sets import PairedSet

    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, 3, size, size, generator=g) * 0.4 + 0.2
    for i in range(n):  # a tint of the class's channel: strong (a confident call) except for every fourth image
        y[i, i % 3] += 0.3 if i % 4 else 0.03
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    masks[:, 6:18, 6:18] = 3
    masks[:, 9:15, 9:15] = 4
    return PairedSet(x=(y * 0.8).clamp(0, 1), y=y, labels=[LogitClassifier.classes[i % 3] for i in range(n)],
                     masks=masks)


def test_paired_evaluation_records_consistency_and_per_image_values():
    data, clf = _set(), LogitClassifier()
    out = (data.y * 0.9 + 0.05).clamp(0, 1)
    out[[1, 5]] = out[[1, 5]].roll(1, dims=1)  # two confident cells change class (the channels rotate)
    ev = paired_evaluation("affine", out, data, run="r", classifier=clf)
    by = {(r.metric, r.cell_type): r for r in ev.records if r.region in ("all",)}
    proba_g = torch.softmax(clf.logits(out).double(), 1).numpy()
    proba_y = torch.softmax(clf.logits(data.y).double(), 1).numpy()
    js_ref = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(proba_g, proba_y, strict=True)])
    js = by[("js_consistency", "all")]
    assert js.value == pytest.approx(js_ref.mean(), abs=1e-12) and js.n == 12 and js.ci_low < js.value < js.ci_high
    assert js.unit == "bits" and js.higher_is_better is False
    assert ev.per_image["js_consistency/all"] == pytest.approx(js_ref, abs=1e-12)
    conf = proba_y.max(1) >= 0.9
    flips = (proba_g.argmax(1) != proba_y.argmax(1))[conf]
    assert 0 < conf.sum() < 12 and flips.sum() >= 2  # the fixture has both kinds of cells, and flips
    fr = by[("flip_rate", "all")]
    assert fr.n == conf.sum() and fr.value == pytest.approx(100 * flips.mean()) and fr.extra["threshold"] == 0.9
    agree = (proba_g.argmax(1) == proba_y.argmax(1)).astype(float)
    assert ev.per_image["agreement/all"].tolist() == agree.tolist()
    assert by[("agreement", "all")].value == pytest.approx(100 * agree.mean())
    # per-image image metrics average to the records
    psnr = next(r for r in ev.records if r.metric == "psnr" and r.region == "wbc" and r.cell_type == "all")
    assert np.mean(ev.per_image["psnr/wbc"]) == pytest.approx(psnr.value)
    # per class too
    assert {ct for (m, ct) in by if m == "js_consistency"} == {"all", *LogitClassifier.classes}


def test_consistency_records_need_matching_lengths():
    p = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="labels"):
        consistency_records("r", "m", p, p, [0, 0, 0], [0, 0, 0], ["a", "b"])


def test_paired_difference_records_both_directions_in_percentage_points(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    values = {"a": {"agreement/all": (rng.random(n) < 0.9).astype(float), "ciede2000_mean/wbc": rng.normal(5, 1, n)},
              "b": {"agreement/all": (rng.random(n) < 0.6).astype(float), "ciede2000_mean/wbc": rng.normal(5, 1, n)}}
    recs = paired_difference_records("r", values, seed=0, resamples=500)
    assert len(recs) == 4 and all(r.metric == "paired_diff" and r.higher_is_better is None for r in recs)
    ab = next(r for r in recs if r.method == "a" and r.extra["metric"] == "agreement")
    ba = next(r for r in recs if r.method == "b" and r.extra["metric"] == "agreement")
    want = 100 * (values["a"]["agreement/all"].mean() - values["b"]["agreement/all"].mean())
    assert ab.value == pytest.approx(want) and ba.value == pytest.approx(-want)
    assert (ba.ci_low, ba.ci_high) == pytest.approx((-ab.ci_high, -ab.ci_low))
    assert ab.extra["unit"] == "pp" and ab.extra["vs"] == "b" and ab.extra["excludes_zero"]
    de = next(r for r in recs if r.method == "a" and r.extra["metric"] == "ciede2000_mean")
    assert de.region == "wbc" and de.extra["unit"] == "dE00" and de.extra["higher_is_better"] is False
    save_results(tmp_path / "run", recs, {}, metrics=METRICS)  # a registered metric


# --------------------------------------------------------------------------- report and compare


def _run_with_differences(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    per_image = {}
    recs = []
    for m, p_agree, de in (("identity", 0.3, 12.0), ("hm", 0.85, 4.0), ("pcnet", 0.88, 3.9)):
        agree = (rng.random(n) < p_agree).astype(float)
        js = rng.random(n) * (1 - p_agree) * 0.2
        dE = rng.normal(de, 1.0, n)
        per_image[m] = {"agreement/all": agree, "js_consistency/all": js, "ciede2000_mean/wbc": dE}
        recs.append(make_record("r", m, "agreement", 100 * agree.mean(), n=n))
        recs.append(make_record("r", m, "js_consistency", js.mean(), n=n))
        recs.append(make_record("r", m, "ciede2000_mean", dE.mean(), n=n, region="wbc"))
    recs += paired_difference_records("r", per_image, seed=0, resamples=500)
    run = tmp_path / "run"
    save_results(run, recs, {}, metrics=METRICS)
    return run, recs


def test_report_shows_consistency_and_the_difference_table(tmp_path):
    from cellbench.report import build_report
    from cellbench.report.tables import paired_difference_table

    run, recs = _run_with_differences(tmp_path)
    html = build_report(run).read_text(encoding="utf-8")
    assert 'data-table="paired-diff"' in html and "JS consistency" in html
    assert 'data-metric="js_consistency"' in html.split('data-table="leaderboard"')[1].split("</table>")[0]
    table = paired_difference_table(recs, ["identity", "hm", "pcnet"])
    cols = [(c.metric, c.region) for c in table.columns]
    assert cols == [("agreement", "all"), ("js_consistency", "all"), ("ciede2000_mean", "wbc")]
    rows = {r.method: r.cells for r in table.rows}
    # the best of each column shows "best"; identity is far worse everywhere: every interval excludes 0
    best = {"agreement": "pcnet", "ciede2000_mean": "pcnet"}
    for j, (metric, _) in enumerate(cols):
        if metric in best:
            assert rows[best[metric]][j].text == "best"
        assert rows["identity"][j].best  # ● marked
    want = next(r for r in recs if r.metric == "paired_diff" and r.method == "identity" and r.extra["vs"] == "pcnet"
                and r.extra["metric"] == "agreement")
    assert rows["identity"][0].value == pytest.approx(want.value)
    # hm vs pcnet on ΔE00 (3.9 vs 4.0 with sd 1 and 300 images): the interval holds 0 -> not marked
    d = next(r for r in recs if r.metric == "paired_diff" and r.method == "hm" and r.extra["vs"] == "pcnet"
             and r.extra["metric"] == "ciede2000_mean")
    assert rows["hm"][2].best == (d.ci_low > 0 or d.ci_high < 0)


def test_report_shows_rank_stability(tmp_path):
    from cellbench.bench.seeds import rank_stability
    from cellbench.report import build_report

    run, recs = _run_with_differences(tmp_path)
    other = [make_record("r", r.method, r.metric, r.value * (1.0 if r.method != "hm" else 1.2), region=r.region, n=r.n)
             for r in recs if r.metric != "paired_diff"]
    stab = rank_stability({0: recs, 1: other})
    by = {(c["metric"], c["region"]): c for c in stab["comparisons"]}
    # agreement: hm x1.2 overtakes pcnet: identity < pcnet < hm vs identity < hm < pcnet -> one swap of 3 pairs
    assert by[("agreement", "all")]["tau"] == pytest.approx(1 / 3)
    assert by[("agreement", "all")]["ranking_a"] == ["pcnet", "hm", "identity"]
    assert by[("agreement", "all")]["ranking_b"] == ["hm", "pcnet", "identity"]
    (run / "rank-stability.json").write_text(json.dumps(stab))
    html = build_report(run).read_text(encoding="utf-8")
    assert 'data-table="rank-stability"' in html and "+0.333" in html


def test_compare_prints_consistency_and_differences(tmp_path, capsys):
    from cellbench.report.build import comparison_summary

    run, _ = _run_with_differences(tmp_path)
    text = comparison_summary(run, ["hm", "pcnet"])
    assert "JS consistency" in text and "hm − pcnet" in text and "identity" not in text


# --------------------------------------------------------------------------- run-all --seeds (tiny)

TINY = ["--set", "synthetic_n=40", "--set", "synthetic_test_n=16", "--set", "size=32", "--set",
        'classifier_preset="tiny"', "--set", "realism=false", "--set", "speed_seconds=0.5", "--set",
        "speed_batch_sizes=[1]", "--set", "speed_repeats=1", "--set", "distilled=[]", "--jobs", "1", "-q"]


def test_run_all_seeds_writes_one_folder_per_seed_and_kendall_tau(tmp_path, capsys):
    from cellbench.cli import main

    out = tmp_path / "seeds"
    assert main(["run-all", "--out", str(out), "--methods", "identity,affine", "--seeds", "0,1", "--no-report",
                 *TINY]) == 0
    printed = capsys.readouterr().out
    assert "Kendall's tau" in printed and "seeds 0 vs 1" in printed
    data = json.loads((out / "rank-stability.json").read_text())
    assert data["seeds"] == [0, 1] and data["run_dirs"] == {"0": "seed-0", "1": "seed-1"}
    assert (out / "seed-0" / "results.json").is_file() and (out / "seed-1" / "rank-stability.json").is_file()
    metrics = {c["metric"] for c in data["comparisons"]}
    assert {"agreement", "js_consistency", "ciede2000_mean"} <= metrics
    de = next(c for c in data["comparisons"] if c["metric"] == "ciede2000_mean")
    # identity is the raw X under both seeds; a fitted affine map is closer to Y under both: same order
    assert de["ranking_a"] == de["ranking_b"] == ["affine", "identity"] and de["tau"] == pytest.approx(1.0)
    # resumable: a second call reuses every stage
    done = {p: p.stat().st_mtime_ns for p in out.glob("seed-*/stages/*/DONE")}
    assert main(["run-all", "--out", str(out), "--methods", "identity,affine", "--seeds", "0,1", "--no-report",
                 *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == done
    # bad seeds are refused before anything runs
    assert main(["run-all", "--out", str(tmp_path / "bad"), "--seeds", "0", *TINY]) == 2
    assert "at least two distinct seeds" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
