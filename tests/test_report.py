"""The HTML report: structure, ranking direction, embedded images, offline-ness, escaping, browser load.

A realistic run folder is written into ``tmp_path`` (records with CIs, per-cell-type, speed, colour
statistics, McNemar; sample PNGs via ``cellbench.io.write_image``; confusion JSON; curves JSONL).
Expected values (best per column, decoded pixels) are computed here from the fixture, independently
of the report code.
"""

from __future__ import annotations

import base64
import json
import math
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cellbench.errors import CellbenchError
from cellbench.eval.metrics import METRICS
from cellbench.io import read_image, write_image
from cellbench.report import build_comparison_report, build_report
from cellbench.results import Record, run_metadata, save_results

try:  # tests/ may or may not be a package
    from .browser import load_page
except ImportError:  # pragma: no cover
    from browser import load_page

EVIL = "<script>alert(1)</script>"
EVIL_ATTR = '"onerror=alert(2) x="'
METHODS = ["identity", "affine", "hm", "pcnet"]
REFS = ["ceiling", "classifier"]
CELL_TYPES = ["lymphocyte", "monocyte", "neutrophil"]
REGIONS = ["nucleus", "cytoplasm", "red_cell", "background"]


# --------------------------------------------------------------------------- fixture


def _image(rng: np.random.Generator, tint: tuple[int, int, int], size: int = 24) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 4 + tint[0], yy * 4 + tint[1], (xx + yy) * 2 + tint[2]], axis=-1)
    return np.clip(base + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)


def make_run(
    root: Path, *, evil: bool = False, methods: list[str] | None = None
) -> tuple[Path, list[Record]]:
    """Write a run folder; return it and its records. ``evil`` puts hostile strings everywhere."""
    rng = np.random.default_rng(7)
    methods = list(methods or METHODS)
    cell_types = list(CELL_TYPES)
    run_id = "run-2024" if not evil else f"run{EVIL}{EVIL_ATTR}"
    if evil:
        methods.append(EVIL)
        cell_types.append(f"{EVIL_ATTR}$x$")
    recs: list[Record] = []

    def add(method, metric, value, *, hib, **kw):
        recs.append(Record(run_id, method, metric, float(value), higher_is_better=hib, **kw))

    quality = {m: i for i, m in enumerate(methods)}  # later methods are better
    for m in methods:
        q = quality[m]
        ag = 60 + 8 * q + rng.uniform(-1, 1)
        add(m, "agreement", ag, hib=True, n=300, ci_low=ag - 5, ci_high=ag + 4, unit="%")
        add(m, "accuracy", ag - 3, hib=True, n=300, ci_low=ag - 8, ci_high=ag + 1, unit="%")
        for region in ("image", "wbc"):
            add(m, "ciede2000_mean", 12 - 2 * q + rng.uniform(0, 0.5), hib=False, region=region, n=300)
            add(m, "ciede2000_p95", 20 - 2 * q, hib=False, region=region, n=300)
            add(m, "psnr", 18 + 2 * q, hib=True, region=region, n=300, unit="dB")
            # a tie on SSIM (image) between the two best methods: both must be marked
            ssim = 0.9 if (region == "image" and q >= len(METHODS) - 2) else 0.6 + 0.05 * q
            add(m, "ssim", ssim, hib=True, region=region, n=300)
        add(m, "c2st_accuracy", 90 - 5 * q, hib=False, n=200, ci_low=85 - 5 * q, ci_high=95 - 5 * q, unit="%")
        add(m, "fid", 80 - 10 * q, hib=False, n=200)
        add(m, "kid", 0.05 - 0.01 * q, hib=False, n=200, extra={"kid_std": 0.002, "subset_size": 100})
        add(m, "w1_L", 5 - q, hib=False, region="wbc", n=200)
        add(m, "novel_score", 3.0 + q, hib=None, n=200)  # not ranked
        for ct in cell_types:
            add(m, "agreement", 55 + 8 * q + rng.uniform(-10, 10), hib=True, cell_type=ct, n=100, unit="%")
            add(
                m,
                "ciede2000_mean",
                13 - 2 * q + rng.uniform(-1, 1),
                hib=False,
                cell_type=ct,
                region="wbc",
                n=100,
            )
            for region in REGIONS:
                add(
                    m,
                    "colour_delta_e",
                    max(0.2, 6 - q + rng.uniform(-1, 1)),
                    hib=False,
                    cell_type=ct,
                    region=region,
                    n=100,
                )
                for ch, tgt in (("L", 70.0), ("a", 15.0), ("b", -10.0)):
                    add(
                        m,
                        f"lab_{ch}_mean",
                        tgt + rng.normal(0, 6 / (q + 1)),
                        hib=None,
                        cell_type=ct,
                        region=region,
                        n=100,
                        extra={"target": tgt + rng.normal(0, 3)},
                    )
        dev = {"device": "cpu", "device_name": "test-cpu", "image_size": 256}
        add(m, "throughput_ips", 500 / (q + 1), hib=True, extra={**dev, "batch_size": 16})
        add(m, "latency_ms_b1", 2.0 * (q + 1), hib=False, extra=dev)
        add(m, "peak_mem_mb", 100 + 50 * q, hib=False, extra=dev)
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            p = 0.5 / (1 + abs(quality[a] - quality[b]) * 20)
            add(a, "mcnemar_p", p, hib=None, n=300, extra={"vs": b, "statistic": 3.2})
    add("ceiling", "agreement", 97.0, hib=True, n=300, ci_low=95.0, ci_high=98.5, unit="%", role="reference")
    add("classifier", "accuracy", 99.0, hib=True, n=300, ci_low=98.0, ci_high=99.6, unit="%", role="reference")

    run = root / "run"
    config = {"profile": "quick", "data": "synthetic", "methods": methods, "seed": 0}
    meta = run_metadata(config)
    if evil:
        meta["config"] = {"note": EVIL, EVIL: EVIL_ATTR, "methods": methods}
        meta["machine"]["hostname"] = f"host{EVIL}{EVIL_ATTR}"
        meta["created"] = EVIL
    # a metric this version does not know (from another version's results) is shown, unranked
    save_results(run, recs, meta, metrics={*METRICS.names(), "novel_score"})

    # artifacts: sample grid with difference maps
    art = run / "artifacts"
    columns = ["X", *methods, "Y"]
    rows = []
    for r_i, ct in enumerate(cell_types):
        images, diffs = {}, {}
        y = _image(rng, (60, 20, 90))
        for c_i, col in enumerate(columns):
            img = y if col == "Y" else _image(rng, (10 * c_i, 40, 30 * r_i))
            name = f"r{r_i}_c{c_i}.png"
            write_image(art / "samples" / name, img)
            images[col] = f"samples/{name}"
            if col not in ("X", "Y"):
                d = np.abs(img.astype(int) - y.astype(int)).clip(0, 255).astype(np.uint8)
                write_image(art / "samples" / f"d{r_i}_c{c_i}.png", d)
                diffs[col] = f"samples/d{r_i}_c{c_i}.png"
        rows.append(
            {
                "cell_type": ct,
                "id": f"cell-{r_i}" if not evil else f"id{EVIL}",
                "images": images,
                "diffs": diffs,
            }
        )
    if evil:
        rows[0]["images"]["X"] = f"samples/{EVIL}.png"  # missing file with a hostile name
        rows[1]["images"]["Y"] = "../../results.json"  # escapes artifacts/: refused
    (art / "samples" / "manifest.json").write_text(json.dumps({"columns": columns, "rows": rows}))

    # confusion matrices
    classes = cell_types
    (art / "confusion").mkdir(parents=True)
    for m in [*methods, "classifier"]:
        mat = rng.integers(0, 5, (len(classes), len(classes))) + np.eye(len(classes), dtype=int) * 40
        name = m if not evil or m != EVIL else "evil"
        (art / "confusion" / f"{name}.json").write_text(
            json.dumps(
                {"classes": classes, "matrix": mat.tolist(), "normalize": False, "title": f"{m} on G(x) $y$"}
            )
        )
    # training curves (one malformed line)
    (art / "curves").mkdir(parents=True)
    lines = [
        json.dumps({"iteration": i, "loss_G": 2.0 / (i + 1), "loss_D": 0.7, "loss_paired": 1.0 / (i + 2)})
        for i in range(0, 200, 10)
    ]
    lines.insert(3, "{not json")
    if evil:
        lines.append(json.dumps({"iteration": 300, EVIL: 1.0}))
    (art / "curves" / "pcnet.jsonl").write_text("\n".join(lines) + "\n")
    (art / "curves" / "classifier.jsonl").write_text(
        "\n".join(
            json.dumps({"epoch": e, "train_loss": 1.0 / (e + 1), "val_accuracy": 0.5 + 0.04 * e})
            for e in range(10)
        )
    )
    return run, recs


# --------------------------------------------------------------------------- HTML parsing


class _Doc(HTMLParser):
    """Collects table cells, header cells, images and every src/href attribute."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.table_stack: list[str] = []
        self.cells: list[dict] = []  # td with data-metric
        self.headers: list[dict] = []
        self.rows: dict[str, list[str]] = {}
        self.imgs: list[dict] = []
        self.refs: list[str] = []
        self.missing: list[str] = []
        self.sections: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if k in a:
                self.refs.append(a[k] or "")
        if tag == "table":
            self.table_stack.append(a.get("data-table", ""))
        table = self.table_stack[-1] if self.table_stack else ""
        if tag == "td" and "data-metric" in a:
            self.cells.append({**a, "table": table, "best": "best" in (a.get("class") or "").split()})
        if tag == "th" and "data-metric" in a:
            self.headers.append({**a, "table": table})
        if tag == "tr" and "data-method" in a:
            self.rows.setdefault(table, []).append(a["data-method"])
        if tag == "img":
            self.imgs.append(a)
        if "data-missing" in a:
            self.missing.append(a["data-missing"])
        if tag == "section":
            self.sections.append(a.get("id", ""))

    def handle_endtag(self, tag):
        if tag == "table" and self.table_stack:
            self.table_stack.pop()


def parse(html: str) -> _Doc:
    d = _Doc()
    d.feed(html)
    return d


def expected_best(
    records: list[Record], metric: str, region: str, cell_type: str = "all", methods: list[str] | None = None
) -> set[str]:
    """Best methods of one column, computed from the fixture records (references excluded)."""
    rs = [
        r
        for r in records
        if r.metric == metric
        and r.region == region
        and r.cell_type == cell_type
        and r.split == "test"
        and r.method not in REFS
        and (methods is None or r.method in methods)
    ]
    hib = {r.higher_is_better for r in rs}
    assert len(hib) == 1
    hib = hib.pop()
    if hib is None:
        return set()
    best = (max if hib else min)(r.value for r in rs)
    return {r.method for r in rs if r.value == best}


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run, recs = make_run(tmp_path_factory.mktemp("report"))
    path = build_report(run)
    return run, recs, path, path.read_text(encoding="utf-8")


def test_writes_report_html_in_run_folder(built):
    run, _, path, html = built
    assert path == run / "report.html"
    assert html.startswith("<!DOCTYPE html>")
    doc = parse(html)
    for sec in (
        "summary",
        "leaderboard",
        "significance",
        "cell-types",
        "samples",
        "colour",
        "confusion",
        "speed",
        "training",
        "environment",
    ):
        assert sec in doc.sections
    assert doc.missing == []  # every section had data


def test_leaderboard_has_every_method_and_marks_best_by_direction(built):
    _, recs, _, html = built
    doc = parse(html)
    assert set(doc.rows["leaderboard"]) == set(METHODS) | set(REFS)
    # references come last and are never marked best
    assert doc.rows["leaderboard"][-2:] == REFS or set(doc.rows["leaderboard"][-2:]) == set(REFS)
    cols = {(h["data-metric"], h["data-region"]) for h in doc.headers if h["table"] == "leaderboard"}
    assert ("agreement", "all") in cols and ("ciede2000_mean", "wbc") in cols and ("fid", "all") in cols
    for metric, region in cols:
        marked = {
            c["data-method"]
            for c in doc.cells
            if c["table"] == "leaderboard"
            and c["best"]
            and c["data-metric"] == metric
            and c["data-region"] == region
        }
        assert marked == expected_best(recs, metric, region), (metric, region)
    # rows are sorted by agreement, best first
    ag = {r.method: r.value for r in recs if r.metric == "agreement" and r.cell_type == "all"}
    ranked = [m for m in doc.rows["leaderboard"] if m not in REFS]
    assert ranked == sorted(METHODS, key=lambda m: -ag[m])


def test_unranked_metric_is_not_marked_and_cis_are_shown(built):
    _, recs, _, html = built
    doc = parse(html)
    novel = [c for c in doc.cells if c["data-metric"] == "novel_score"]
    assert novel and not any(c["best"] for c in novel)
    # the all-metrics table marks by direction too
    assert len(expected_best(recs, "ssim", "image")) == 2  # a tie: both must be marked
    for metric, region in {("w1_L", "wbc"), ("psnr", "image"), ("ssim", "image"), ("kid", "all")}:
        marked = {
            c["data-method"]
            for c in doc.cells
            if c["table"] == "all-metrics"
            and c["best"]
            and c["data-metric"] == metric
            and c["data-region"] == region
        }
        assert marked == expected_best(recs, metric, region)
    r = next(r for r in recs if r.method == "hm" and r.metric == "agreement" and r.cell_type == "all")
    assert f"[{r.ci_low:.1f}, {r.ci_high:.1f}]" in html


def test_per_cell_type_tables_mark_best_per_cell_type(built):
    _, recs, _, html = built
    doc = parse(html)
    cells = [c for c in doc.cells if c["table"] == "cell-type"]
    for ct in CELL_TYPES:
        for metric, region in (("agreement", "all"), ("ciede2000_mean", "wbc")):
            marked = {
                c["data-method"]
                for c in cells
                if c["best"]
                and c["data-metric"] == metric
                and c["data-cell-type"] == ct
                and c["data-region"] == region
            }
            assert marked == expected_best(recs, metric, region, ct), (ct, metric)


def test_images_are_embedded_and_decode_to_the_stored_pixels(built, tmp_path):
    run, _, _, html = built
    doc = parse(html)
    uris = [i["src"] for i in doc.imgs]
    assert uris and all(u.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for u in uris)
    n_grid = len(CELL_TYPES) * (len(METHODS) + 2) + len(CELL_TYPES) * len(METHODS)  # images + diffs
    # grid + 2 colour figures + confusion (methods + classifier) + speed + 2 curve figures
    assert len(uris) == n_grid + 2 + (len(METHODS) + 1) + 1 + 2
    manifest = json.loads((run / "artifacts" / "samples" / "manifest.json").read_text())
    row = manifest["rows"][1]
    img = next(i for i in doc.imgs if i.get("alt") == f"{row['cell_type']} hm")
    assert img["src"].startswith("data:image/jpeg;base64,")  # grid images: JPEG 4:4:4, quality 90
    p = tmp_path / "decoded.jpg"
    p.write_bytes(base64.b64decode(img["src"].split(",", 1)[1]))
    expected = read_image(run / "artifacts" / row["images"]["hm"]).astype(float)
    decoded = read_image(p).astype(float)
    # the fixture's pixels are random noise, JPEG's worst case: the colour is kept, the noise blurred
    np.testing.assert_allclose(decoded.mean(axis=(0, 1)), expected.mean(axis=(0, 1)), atol=1.0)
    assert np.abs(decoded - expected).mean() < 6.0


def test_report_makes_no_external_references(built):
    _, _, _, html = built
    doc = parse(html)
    assert doc.refs
    for ref in doc.refs:
        assert ref.startswith("data:") or ref.startswith("#"), ref
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html
    assert re.search(r"<link\b", html) is None
    # the only script is our inline one, and the CSP forbids everything but data: images
    assert html.count("<script") == 1 and "<script src" not in html
    csp = unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1))
    assert "default-src 'none'" in csp and "img-src data:" in csp and "connect-src" not in csp


def test_metadata_and_environment_are_shown(built):
    _, _, _, html = built
    assert "0.1.0" in html
    assert "&#34;profile&#34;: &#34;quick&#34;" in html  # config as escaped JSON
    assert "hostname" in html and "torch" in html


def test_hostile_strings_are_escaped(tmp_path):
    run, _ = make_run(tmp_path, evil=True)
    html = build_report(run).read_text(encoding="utf-8")
    assert EVIL not in html
    assert '"onerror=' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, escaped
    assert html.count("<script") == 1
    doc = parse(html)
    assert EVIL in doc.rows["leaderboard"]  # the parsed (unescaped) method name is intact
    assert any(
        "refused" in n or "not inside artifacts" in n for n in re.findall(r'class="note">([^<]*)', html)
    )
    for ref in doc.refs:
        assert ref.startswith("data:") or ref.startswith("#")


def test_missing_sections_are_noted_not_crashing(tmp_path):
    run = tmp_path / "bare"
    recs = [
        Record("r", m, "agreement", v, n=10, higher_is_better=True, unit="%")
        for m, v in (("identity", 50.0), ("hm", 70.0))
    ]
    save_results(run, recs, {}, metrics=METRICS)
    html = build_report(run, title="Bare run").read_text(encoding="utf-8")
    doc = parse(html)
    assert {"cell-types", "samples", "colour", "confusion", "speed", "training"} <= set(doc.missing)
    assert "significance" not in doc.sections  # only in comparisons or when McNemar records exist
    assert "<title>Bare run</title>" in html
    marked = [c["data-method"] for c in doc.cells if c["best"]]
    assert marked == ["hm"]


def test_damaged_artifacts_drop_one_figure_not_the_report(tmp_path):
    run, _ = make_run(tmp_path)
    (run / "artifacts" / "samples" / "manifest.json").write_text("{broken")
    (run / "artifacts" / "confusion" / "hm.json").write_text(
        json.dumps({"classes": ["a"], "matrix": [[1, 2]]})
    )
    (run / "artifacts" / "curves" / "pcnet.jsonl").write_text("nonsense\n")
    html = build_report(run).read_text(encoding="utf-8")
    assert "manifest.json: unreadable JSON" in html
    assert "hm.json: not a confusion matrix" in html
    assert "pcnet.jsonl: 1 malformed line(s) skipped" in html
    assert 'alt="confusion matrix affine"' in html


def test_missing_results_raise_cellbench_error(tmp_path):
    with pytest.raises(CellbenchError, match="no results file"):
        build_report(tmp_path)


def test_comparison_report_restricts_methods_and_shows_mcnemar_matrix(built, tmp_path):
    run, recs, _, _ = built
    chosen = ["pcnet", "hm", "affine"]
    out = build_comparison_report(run, chosen, out=tmp_path / "cmp.html")
    html = out.read_text(encoding="utf-8")
    doc = parse(html)
    assert set(doc.rows["leaderboard"]) == set(chosen) | set(REFS)
    body = html.split('id="environment"')[0]  # the run's config (shown at the end) lists every method
    assert "identity" not in body
    # best marks recomputed among the chosen methods only
    marked = {
        c["data-method"]
        for c in doc.cells
        if c["table"] == "leaderboard" and c["best"] and c["data-metric"] == "throughput_ips"
    }
    assert marked == set()  # speed is not in the leaderboard
    for metric, region in (("agreement", "all"), ("psnr", "wbc")):
        marked = {
            c["data-method"]
            for c in doc.cells
            if c["table"] == "leaderboard"
            and c["best"]
            and c["data-metric"] == metric
            and c["data-region"] == region
        }
        assert marked == expected_best(recs, metric, region, methods=chosen)
    # McNemar matrix: both directions filled from the stored p-values, in the order asked for
    assert doc.rows["significance"] == chosen
    for r in recs:
        if r.metric == "mcnemar_p" and r.method in chosen and r.extra["vs"] in chosen:
            text = "<0.001" if r.value < 0.001 else f"{r.value:.3f}"
            assert html.count(f">{text.replace('<', '&lt;')}<") >= 2  # (a, b) and (b, a)
    # samples restricted to X, chosen methods, Y
    heads = re.search(r'data-table="samples">\s*<thead><tr><th></th>(.*?)</tr>', html, re.S).group(1)
    assert re.findall(r">([^<]+)</th>", heads) == ["X", "affine", "hm", "pcnet", "Y"]
    assert 'alt="confusion matrix identity"' not in html
    assert 'alt="confusion matrix classifier"' in html


def test_comparison_report_default_name_and_bad_method(built):
    run, _, _, _ = built
    path = build_comparison_report(run, ["hm", "pcnet"])
    assert path.name == "compare-hm-pcnet.html" and path.is_file()
    with pytest.raises(CellbenchError, match="did you mean 'pcnet'"):
        build_comparison_report(run, ["hm", "pcnt"])
    with pytest.raises(CellbenchError, match="at least two"):
        build_comparison_report(run, ["hm"])


def test_report_is_deterministic_apart_from_the_generation_time(built):
    run, _, _, html = built
    again = build_report(run, out=run / "again.html").read_text(encoding="utf-8")
    strip = lambda s: re.sub(r"Generated [^ ]+ by", "", s)  # noqa: E731
    assert strip(again) == strip(html)


# --------------------------------------------------------------------------- browser


def test_report_loads_in_headless_chromium_without_errors(built, tmp_path):
    _, _, path, _ = built
    page = load_page(path, tmp_path / "chrome")
    assert page.returncode == 0, page.stderr[-2000:]
    assert re.search(r'<body[^>]*data-ok="1"', page.dom), "the load event did not run"
    assert re.search(r'id="cb-errors"[^>]*data-count="0"', page.dom), page.dom[-3000:]
    assert page.console == [], page.console
    assert page.screenshot is not None
    shot = read_image(page.screenshot)
    assert shot.shape[0] >= 1000 and shot.shape[1] >= 1000
    assert shot.reshape(-1, 3).std(axis=0).max() > 10  # not a blank page
    assert len(np.unique(shot.reshape(-1, 3)[::7], axis=0)) > 50


def test_browser_check_detects_a_blocked_external_request(built, tmp_path):
    """Negative control: the same page with an external image must report an error."""
    _, _, path, html = built
    bad = tmp_path / "bad.html"
    bad.write_text(html.replace("<main>", '<main><img src="http://127.0.0.1:9/x.png" alt="x">', 1))
    page = load_page(bad, tmp_path / "chrome")
    assert re.search(r'<body[^>]*data-ok="1"', page.dom)
    assert not re.search(r'id="cb-errors"[^>]*data-count="0"', page.dom)
    assert any("127.0.0.1" in m for m in page.console)


def test_fmt_is_finite_safe():
    from cellbench.report.tables import fmt_value

    assert fmt_value(float("nan")) == "—"
    assert fmt_value(math.inf) == "∞"
    assert fmt_value(0.00012, metric="mcnemar_p") == "<0.001"
    assert fmt_value(87.25, unit="%") == "87.2"
    assert fmt_value(0.91234) == "0.9123"


def test_markdown_leaderboard_matches_the_records_and_escapes(built, tmp_path, capsys):
    from cellbench.cli import main

    run, recs, _, _ = built
    assert main(["report", str(run), "--markdown"]) == 0
    out = capsys.readouterr().out
    board = out.split("### Speed")[0]
    assert board.startswith("### Leaderboard")
    rows = {ln.split("|")[1].strip(): ln for ln in board.splitlines() if ln.startswith("| ")}
    ag = {r.method: r.value for r in recs if r.metric == "agreement" and r.cell_type == "all"}
    best = max(METHODS, key=lambda m: ag[m])
    assert f"{ag[best]:.1f}" in rows[best] and "★" in rows[best]
    ranked = [name for name in rows if name in METHODS]
    assert ranked == sorted(METHODS, key=lambda m: -ag[m])  # same order as the HTML leaderboard
    assert not (run / "report.md").exists()  # printing writes nothing
    evil_run, _ = make_run(tmp_path / "evil", evil=True)
    assert main(["report", str(evil_run), "--markdown"]) == 0
    evil_out = capsys.readouterr().out
    assert "alert(1)" in evil_out  # shown
    for block in evil_out.split("### ")[1:]:
        table = [ln for ln in block.splitlines() if ln.startswith("|")]
        cols = {len(re.findall(r"(?<!\\)\|", ln)) for ln in table}
        assert len(cols) == 1, cols  # a hostile name cannot add or break columns


def test_references_are_a_role_not_a_name(tmp_path):
    """A reference row with any name is shown last and never ranked; an old file's "ceiling" still is."""
    run = tmp_path / "roles"
    recs = [Record("r", "identity", "agreement", 50.0, n=10, higher_is_better=True, unit="%"),
            Record("r", "hm", "agreement", 70.0, n=10, higher_is_better=True, unit="%"),
            Record("r", "oracle", "agreement", 99.0, n=10, higher_is_better=True, unit="%", role="reference")]
    save_results(run, recs, {}, metrics=METRICS)
    doc = parse(build_report(run).read_text(encoding="utf-8"))
    assert doc.rows["leaderboard"] == ["hm", "identity", "oracle"]
    assert [c["data-method"] for c in doc.cells if c["best"]] == ["hm"]  # 99 % is a reference, not ranked
    # a results file from before roles: no "role" key, the reference rows named "ceiling"/"classifier"
    payload = json.loads((run / "results.json").read_text())
    for r in payload["records"]:
        del r["role"]
        r["method"] = "ceiling" if r["method"] == "oracle" else r["method"]
    (run / "results.json").write_text(json.dumps(payload))
    doc = parse(build_report(run).read_text(encoding="utf-8"))
    assert doc.rows["leaderboard"] == ["hm", "identity", "ceiling"]
    assert [c["data-method"] for c in doc.cells if c["best"]] == ["hm"]


def test_passthrough_images_are_noted_per_method(tmp_path, capsys):
    from cellbench.cli import main
    from cellbench.eval.metrics import make_record

    run = tmp_path / "pass"
    recs = [make_record("r", m, "agreement", v, n=10) for m, v in (("identity", 50.0), ("macenko", 70.0))]
    recs += [make_record("r", "identity", "passthrough_images", 0, n=10),
             make_record("r", "macenko", "passthrough_images", 3, n=10)]
    save_results(run, recs, {}, metrics=METRICS)
    html = build_report(run).read_text(encoding="utf-8")
    assert "macenko returned 3 of 10 test images unchanged" in html
    assert "identity returned" not in html
    assert main(["report", str(run), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "Passed through" in out and "macenko returned 3 of 10" in out
