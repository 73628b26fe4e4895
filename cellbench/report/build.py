"""Assemble the report from a run folder and render the Jinja2 template to one HTML file.

The report reads only ``results.json`` and ``artifacts/`` (docs/run-folder.md); it never
recomputes a metric. Sections whose data are missing are replaced by a short note.
"""

from __future__ import annotations

import base64
import datetime as _dt
import difflib
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from .. import __version__
from ..errors import CellbenchError
from ..fs import atomic_write
from ..results import Record, check_fingerprints, load_results
from . import artifacts as art
from . import figures as fig
from . import tables as tab

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "report.html.j2"

#: The page's only script (templates/onload.js, no external code): records errors, including blocked
#: resources and Content-Security-Policy violations, into ``#cb-errors`` and sets ``body[data-ok="1"]``
#: on load, so a headless browser's ``--dump-dom`` shows whether the page loaded cleanly. It is
#: allowed by its hash in the page's CSP; any other (injected) inline script would be blocked.
ONLOAD_JS = (TEMPLATES / "onload.js").read_text(encoding="utf-8").strip()


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(ONLOAD_JS.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )


@dataclass
class Figure:
    uri: str
    caption: str = ""
    alt: str = ""


@dataclass
class Section:
    id: str
    title: str
    note: str = ""  # shown instead of the content when the data are missing
    intro: str = ""
    tables: list[tab.Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    gallery: list[Figure] = field(default_factory=list)  # small figures laid out in a grid
    grid: art.SampleGrid | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.tables or self.figures or self.gallery or (self.grid and self.grid.rows))


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every user string is escaped; nothing from a user file is marked safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    return env


def _methods_in(records: Sequence[Record]) -> list[str]:
    return tab.order_methods(records)


def _check_methods(requested: Sequence[str], available: Sequence[str], run_dir: Path) -> list[str]:
    out = []
    for m in requested:
        if m not in available:
            close = difflib.get_close_matches(m, available, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise CellbenchError(
                f"{run_dir}: no results for method {m!r}{hint} "
                f"(methods with results: {', '.join(available) or 'none'})"
            )
        out.append(m)
    return list(dict.fromkeys(out))


def _summary(
    records: Sequence[Record], metadata: dict[str, Any], run_dir: Path, methods: Sequence[str]
) -> dict:
    md = metadata if isinstance(metadata, dict) else {}
    git = md.get("git") if isinstance(md.get("git"), dict) else {}
    commit = git.get("commit")
    runs = Counter(r.run for r in records)
    refs = tab.reference_methods(records)
    return {
        "run": runs.most_common(1)[0][0] if runs else run_dir.name,
        "created": str(md.get("created", "unknown")),
        "version": str(md.get("cellbench_version", "unknown")),
        "commit": str(commit) if commit else "unknown",
        "commit_short": str(commit)[:10] if commit else "unknown",
        "dirty": git.get("dirty"),
        "n_records": len(records),
        "methods": [m for m in methods if m not in refs],
        "references": [m for m in methods if m in refs],
        "cell_types": tab.cell_type_order(r.cell_type for r in records),
        "splits": sorted({r.split for r in records}),
        "machine": md.get("machine") if isinstance(md.get("machine"), dict) else {},
        "config": md.get("config", {}),
        "schema_version": md.get("schema_version", ""),
        "extra_metadata": {
            k: v
            for k, v in md.items()
            if k not in ("git", "machine", "config", "created", "cellbench_version", "schema_version")
        },
    }


def _sections(run_dir: Path, records: list[Record], methods: list[str], *, comparison: bool) -> list[Section]:
    restrict = methods if comparison else None
    refs = tab.reference_methods(records)
    secs: list[Section] = []

    # leaderboard
    s = Section("leaderboard", "Leaderboard")
    lb = tab.leaderboard(records, methods)
    if lb:
        s.tables.append(lb)
        if any(r.metric in ("fid", "kid") for r in records):
            n = max((r.n for r in records if r.metric in ("fid", "kid")), default=0)
            s.notes.append(
                "FID and KID are computed on the WBC classifier's penultimate features"
                + (f" from {n} test images" if n else "")
                + ": with few images FID is biased upwards and both are noisy; compare methods within "
                "one run only, not with published values."
            )
        if any(r.metric == "c2st_accuracy" for r in records):
            s.notes.append("C2ST accuracy: 50 % means a classifier cannot tell G(x) from real y.")
        if set(methods) & refs:
            s.notes.append(
                "Grey rows are references (ceiling: the classifier on y vs a second rendering of y; "
                "classifier: its own accuracy on real Y images); they are not ranked."
            )
        s.notes.extend(_passthrough_notes(records, methods))
    else:
        s.note = "No overall test records in results.json; nothing to rank."
    secs.append(s)

    # paired bootstrap differences and McNemar
    s = Section("significance", "Significance: paired differences and McNemar")
    diff = tab.paired_difference_table(records, methods)
    if diff:
        s.tables.append(diff)
    if comparison and len([m for m in methods if m not in refs]) <= 6:
        pairs = tab.paired_difference_pairs(records, [m for m in methods if m not in refs])
        if pairs:
            s.tables.append(pairs)
    mc = tab.mcnemar_matrix(records, methods)
    if mc:
        mc.row_header = ""
        mc.caption = "Pairwise McNemar tests on same-class agreement: p-values; ● p < 0.05 " \
                     "(no multiple-comparison correction)."
        s.tables.append(mc)
    if s.tables:
        s.intro = ("Differences between methods on the same test images: paired bootstrap intervals of "
                   "mean(method) − mean(best) for every per-image metric (Efron & Tibshirani 1993), and exact "
                   "McNemar tests on agreement.")
    else:
        s.note = "No paired-difference (paired_diff) or McNemar (mcnemar_p) records for these methods."
    if s.tables or comparison:
        secs.append(s)

    # rank stability across seeds
    stability = _rank_stability(run_dir)
    if stability is not None:
        s = Section("rank-stability", "Rank stability across seeds")
        table, notes = stability
        if table:
            s.tables.append(table)
            s.intro = ("Kendall's tau (Kendall 1938) between the method rankings of two seeds for each headline "
                       "metric: 1 = the same order, 0 = unrelated, −1 = reversed (rank-stability.json, written "
                       "by `cellbench run-all --seeds`).")
        else:
            s.note = "rank-stability.json lists no rankings."
        s.notes.extend(notes)
        secs.append(s)

    # per cell type
    s = Section("cell-types", "Per cell type")
    s.tables = tab.per_cell_type_tables(records, methods)
    if not s.tables:
        s.note = "No per-cell-type records."
    secs.append(s)

    # samples
    s = Section("samples", "Sample images")
    grid = art.load_samples(run_dir, restrict)
    if grid is None:
        s.note = "No sample grid (artifacts/samples/manifest.json) in this run."
    else:
        s.grid = grid
        s.notes.extend(grid.notes)
        s.intro = (
            "One cell of each type per row: the source image X, each method's G(x), and the target Y"
            + (", with the difference map under each image." if grid.has_diffs else ".")
        )
        if not grid.rows:
            s.note = "The sample manifest lists no rows."
    secs.append(s)

    # colour statistics
    s = Section("colour", "Colour statistics")
    uri = fig.colour_delta_e_heatmaps(records, methods)
    if uri:
        s.figures.append(
            Figure(
                uri,
                "CIEDE2000 between the mean CIELAB colour of G(x) and of y, per region and "
                "cell type (lower is better).",
                "colour difference heatmaps",
            )
        )
    uri = fig.lab_means_scatter(records, methods)
    if uri:
        s.figures.append(
            Figure(
                uri,
                "Mean L*, a*, b* of G(x) against the target y per cell type and region; "
                "points on the dashed diagonal match the target.",
                "Lab means scatter",
            )
        )
    if not s.figures:
        s.note = "No colour-statistics records (colour_delta_e, lab_*_mean)."
    secs.append(s)

    # confusion
    s = Section("confusion", "Confusion matrices")
    confs, notes = art.load_confusions(
        run_dir, restrict if restrict is None else list(restrict) + sorted(refs)
    )
    s.notes.extend(notes)
    for c in confs:
        s.gallery.append(Figure(fig.confusion_figure(c), c.name, f"confusion matrix {c.name}"))
    if s.gallery:
        s.intro = (
            "Rows: reference class (the classifier on real y, or the label); columns: predicted on G(x). "
            "Colour: fraction of the row."
        )
    else:
        s.note = "No confusion matrices (artifacts/confusion/*.json)."
    secs.append(s)

    # speed
    s = Section("speed", "Speed and quality")
    st = tab.speed_table(records, methods)
    if st:
        s.tables.append(st)
    uri = fig.speed_quality(records, methods)
    if uri:
        s.figures.append(
            Figure(
                uri,
                "Speed against quality: up-right is fast and good for agreement, "
                "down-right for ΔE00. Vertical bars: 95 % CI.",
                "speed-quality plot",
            )
        )
    if s.empty:
        s.note = "No speed records (throughput_ips, latency_ms_b1)."
    secs.append(s)

    # training curves
    s = Section("training", "Training curves")
    curves, notes = art.load_curves(
        run_dir, restrict if restrict is None else list(restrict) + sorted(refs)
    )
    s.notes.extend(notes)
    for c in curves:
        s.figures.append(
            Figure(
                fig.curve_figure(c),
                f"{c.name}: training log (curves/{c.name}.jsonl)",
                f"training curves {c.name}",
            )
        )
    if not s.figures:
        s.note = "No training logs (artifacts/curves/*.jsonl): no method in this run was trained iteratively."
    secs.append(s)

    # all metrics
    s = Section("all-metrics", "All overall metrics")
    am = tab.all_metrics(records, methods)
    if am and len(am.columns) > len(lb.columns):
        s.tables.append(am)
        secs.append(s)
    return secs


RANK_STABILITY = "rank-stability.json"


def _rank_stability(run_dir: Path) -> tuple[tab.Table, list[str]] | None:
    """The table of ``run_dir/rank-stability.json`` (None when the file is absent; a note when damaged)."""
    path = run_dir / RANK_STABILITY
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows_in = [r for r in data["comparisons"] if isinstance(r, dict)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return tab.Table([], []), [f"{RANK_STABILITY} unreadable ({exc}); run `cellbench run-all --seeds` again."]
    columns = [tab.Column("kendall_tau", title="Kendall's tau"), tab.Column("kendall_p", title="p-value"),
               tab.Column("n_methods", title="methods"), tab.Column("ranking_a", title="ranking (first seed)"),
               tab.Column("ranking_b", title="ranking (second seed)")]
    rows = []
    for r in rows_in:
        tau, p = r.get("tau"), r.get("pvalue")
        name = (f"{tab.label(str(r.get('metric', '?')))} ({r.get('region', 'all')}), "
                f"seeds {r.get('seed_a')} vs {r.get('seed_b')}")
        cells = [tab.Cell(text="undefined (ties)" if not tab.finite(tau) else f"{tau:+.3f}",
                          value=tau if tab.finite(tau) else None),
                 tab.Cell(text=tab.fmt_value(p, metric="mcnemar_p") if tab.finite(p) else "—"),
                 tab.Cell(text=str(r.get("n_methods", "—"))),
                 tab.Cell(text=" > ".join(map(str, r.get("ranking_a") or []))),
                 tab.Cell(text=" > ".join(map(str, r.get("ranking_b") or [])))]
        rows.append(tab.Row(name, cells))
    table = tab.Table(columns, rows, row_header="Metric", name="rank-stability", caption=(
        "Rankings best first in each metric's direction; tau-b corrects for ties and is undefined when every "
        "method ties."))
    return table, []


def _passthrough_notes(records: Sequence[Record], methods: Sequence[str]) -> list[str]:
    """One note per method that returned test images unchanged (``passthrough_images`` > 0)."""
    notes = []
    for r in records:
        if r.metric == "passthrough_images" and r.method in methods and tab.finite(r.value) and r.value > 0:
            notes.append(f"{r.method} returned {int(r.value)} of {r.n} test images unchanged (it failed on them); "
                         "its figures include those raw images.")
    return notes


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, text)  # with the umask's mode: a report is meant to be shared


def render(
    run_dir: str | os.PathLike,
    *,
    methods: Sequence[str] | None = None,
    title: str | None = None,
    comparison: bool = False,
) -> str:
    """The report's HTML text (see :func:`build_report`)."""
    run = Path(run_dir)
    records, metadata = load_results(run)
    check_fingerprints(metadata, run / "results.json")
    available = _methods_in(records)
    refs = tab.reference_methods(records)
    if methods is not None:
        chosen = _check_methods(methods, available, run)
        keep = set(chosen) | refs
        records = [r for r in records if r.method in keep]
        methods_list = chosen + [m for m in available if m in refs and m not in chosen]
    else:
        methods_list = available
    summary = _summary(records, metadata, run, methods_list)
    kind = "comparison" if comparison else "report"
    page_title = title or (
        f"cellbench comparison — {', '.join(summary['methods'])}"
        if comparison
        else f"cellbench report — {summary['run']}"
    )
    sections = _sections(run, records, methods_list, comparison=comparison)
    html = (
        _env()
        .get_template(TEMPLATE)
        .render(
            title=page_title,
            kind=kind,
            summary=summary,
            sections=sections,
            csp=_csp(),
            onload_js=Markup(ONLOAD_JS),  # our own constant, allowed by its CSP hash; never user data
            generated=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            generator_version=__version__,
        )
    )
    return html


def build_report(
    run_dir: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    title: str | None = None,
    methods: Sequence[str] | None = None,
) -> Path:
    """Write the self-contained HTML report of a run folder.

    Parameters
    ----------
    run_dir
        A run folder holding ``results.json`` (and optionally ``artifacts/``), see docs/run-folder.md.
    out
        Output file; default ``run_dir/report.html``.
    title
        Page title; default ``"cellbench report — <run id>"``.
    methods
        Restrict the report to these methods (references ``ceiling``/``classifier`` are kept).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    CellbenchError
        When ``results.json`` is missing or unreadable, or a requested method has no results.
    """
    html = render(run_dir, methods=methods, title=title, comparison=False)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    _atomic_write(path, html)
    log.info("report written to %s", path)
    return path


def comparison_filename(methods: Sequence[str]) -> str:
    """``compare-<a>-<b>.html`` with characters outside ``[A-Za-z0-9_.]`` replaced."""
    safe = [re.sub(r"[^A-Za-z0-9_.]+", "_", m) for m in methods]
    return "compare-" + "-".join(safe)[:120] + ".html"


def build_comparison_report(
    run_dir: str | os.PathLike, methods: Sequence[str], out: str | os.PathLike | None = None
) -> Path:
    """Write the report restricted to ``methods`` plus their pairwise McNemar matrix.

    Default output: ``run_dir/compare-<a>-<b>-....html``. Raises :class:`CellbenchError` when fewer
    than two methods are named or one has no results.
    """
    methods = list(dict.fromkeys(methods))
    if len(methods) < 2:
        raise CellbenchError(f"compare needs at least two methods, got {methods}")
    html = render(run_dir, methods=methods, comparison=True)
    path = Path(out) if out is not None else Path(run_dir) / comparison_filename(methods)
    _atomic_write(path, html)
    log.info("comparison report written to %s", path)
    return path


def markdown_report(run_dir: str | os.PathLike) -> str:
    """The leaderboard, speed, colour and per-cell-type tables of a run folder as Markdown."""
    records, metadata = load_results(run_dir)  # a clear CellbenchError when there are none
    check_fingerprints(metadata, Path(run_dir) / "results.json")
    methods = tab.order_methods(records)
    sections = [("Leaderboard", tab.leaderboard(records, methods)),
                ("Paired bootstrap differences from the best method (● the 95 % interval excludes 0)",
                 tab.paired_difference_table(records, methods)),
                ("Speed", tab.speed_table(records, methods))]
    if any(r.metric == "accuracy_gain" for r in records):
        sections.append(("Accuracy gain over raw X (cross-system track)", tab.metric_columns(
            records, methods, [("accuracy", "all"), ("accuracy_gain", "all")])))
    sections.append(("Colour statistics: ΔE00 between the mean Lab colours of each region and Y's",
                     tab.metric_columns(records, methods, [("colour_delta_e", reg) for reg in (
                         "wbc", "nucleus", "cytoplasm", "red_cell", "background")])))
    sections += [(t.caption, t) for t in tab.per_cell_type_tables(records, methods)]
    notes = _passthrough_notes(records, methods)
    text = "".join(f"### {title}\n\n{tab.to_markdown(table)}\n"
                   + "".join(f"\n{n}\n" for n in (getattr(table, "notes", None) or []))
                   for title, table in sections if table)
    return text + "".join(f"Note: {n}\n" for n in notes)


#: Columns ``compare`` prints for each method: agreement, the consistency measures and the colour error.
COMPARE_COLUMNS = (("agreement", "all"), ("js_consistency", "all"), ("flip_rate", "all"), ("ciede2000_mean", "wbc"),
                   ("ciede2000_mean", "image"))


def comparison_summary(run_dir: str | os.PathLike, methods: Sequence[str]) -> str:
    """What ``cellbench compare`` prints: the compared methods' agreement, JS consistency, flip rate and
    ΔE00 (with intervals), then every pair's paired bootstrap differences and McNemar p, as Markdown."""
    records, metadata = load_results(run_dir)
    check_fingerprints(metadata, Path(run_dir) / "results.json")
    chosen = _check_methods(list(dict.fromkeys(methods)), _methods_in(records), Path(run_dir))
    refs = tab.reference_methods(records)
    table = tab.metric_columns(records, chosen + sorted(refs), list(COMPARE_COLUMNS))
    pairs = tab.paired_difference_pairs(records, [m for m in chosen if m not in refs])
    text = ""
    if table:
        text += "### Agreement, prediction consistency and colour error (95 % intervals)\n\n" + tab.to_markdown(table)
    if pairs:
        text += ("\n### Paired differences A − B (95 % paired bootstrap intervals; ● excludes 0)\n\n"
                 + tab.to_markdown(pairs))
    return text
