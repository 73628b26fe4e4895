"""Tables of the report, built from stored :class:`~cellbench.results.Record` s only.

Pure functions: records in, small view-model objects out (no HTML, no files). Every ranking uses
the direction stored with the record (``Record.higher_is_better``; ``None`` = not ranked), so a new
metric is ranked correctly without special cases here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..data.classes import CLASSES
from ..results import Record

log = logging.getLogger(__name__)


def reference_methods(records: Iterable[Record]) -> set[str]:
    """Rows shown for context but never ranked: records with ``role="reference"`` (the ceiling, the
    classifier's own accuracy on real Y images; results files without roles are read with the
    same roles, see :meth:`cellbench.results.Record.from_dict`)."""
    return {r.method for r in records if r.role == "reference"}

#: Speed and cost metrics (their own table; matched on any split, keyed also by device).
SPEED_METRICS: tuple[str, ...] = (
    "throughput_ips",
    "latency_ms_b1",
    "latency_ms_b1_p90",
    "peak_mem_mb",
    "fit_seconds",
    "passthrough_images",
)

#: Headline columns of the leaderboard, in display order: ``(metric, region)``.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("agreement", "all"),
    ("js_consistency", "all"),
    ("flip_rate", "all"),
    ("accuracy", "all"),
    ("ciede2000_mean", "wbc"),
    ("ciede2000_mean", "image"),
    ("ciede2000_p95", "wbc"),
    ("psnr", "wbc"),
    ("ssim", "wbc"),
    ("c2st_accuracy", "all"),
    ("fid", "all"),
    ("kid", "all"),
)

#: Per-cell-type tables: metric and the regions to try, first found wins.
PER_CELL_TYPE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("agreement", ("all",)),
    ("js_consistency", ("all",)),
    ("accuracy", ("all",)),
    ("ciede2000_mean", ("wbc", "image", "all")),
    ("psnr", ("wbc", "image", "all")),
    ("ssim", ("wbc", "image", "all")),
)

LABELS: dict[str, str] = {
    "agreement": "Agreement",
    "accuracy": "Accuracy",
    "accuracy_gain": "Gain vs raw X",
    "mcnemar_p": "McNemar p",
    "js_consistency": "JS consistency",
    "flip_rate": "Flip rate (confident)",
    "paired_diff": "Difference",
    "psnr": "PSNR",
    "ssim": "SSIM",
    "ciede2000_mean": "ΔE00 mean",
    "ciede2000_p95": "ΔE00 p95",
    "colour_delta_e": "ΔE00 of means",
    "w1_L": "W1 L*",
    "w1_a": "W1 a*",
    "w1_b": "W1 b*",
    "c2st_accuracy": "C2ST accuracy",
    "fid": "FID",
    "kid": "KID",
    "latency_ms_b1": "Latency b1 (median)",
    "latency_ms_b1_p90": "Latency b1 (p90)",
    "throughput_ips": "Throughput",
    "peak_mem_mb": "Peak memory",
    "fit_seconds": "Fit time",
    "passthrough_images": "Passed through",
}

UNITS: dict[str, str] = {
    "latency_ms_b1": "ms",
    "latency_ms_b1_p90": "ms",
    "throughput_ips": "img/s",
    "peak_mem_mb": "MB",
    "fit_seconds": "s",
    "psnr": "dB",
}


#: Metrics stored per pair of methods (``extra["vs"]``): never a column of a method table.
PAIRWISE_METRICS: tuple[str, ...] = ("mcnemar_p", "paired_diff")

#: Columns of the paired-difference tables, in display order: ``(metric, region)`` of ``paired_diff`` records.
DIFF_COLUMNS: tuple[tuple[str, str], ...] = (
    ("agreement", "all"),
    ("js_consistency", "all"),
    ("flip_rate", "all"),
    ("ciede2000_mean", "wbc"),
    ("ciede2000_mean", "image"),
    ("ciede2000_p95", "wbc"),
    ("ciede2000_p95", "image"),
    ("psnr", "wbc"),
    ("psnr", "image"),
    ("ssim", "wbc"),
    ("ssim", "image"),
    ("accuracy", "all"),
)


def label(metric: str) -> str:
    """Display name of a metric (the metric key itself when unknown)."""
    return LABELS.get(metric, metric)


def is_descriptive(metric: str) -> bool:
    """Metrics that describe rather than score (Lab means/stds, p-values): kept out of rankings."""
    return metric.startswith("lab_") or metric in PAIRWISE_METRICS


def finite(v: float | None) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def fmt_value(v: float | None, *, metric: str = "", unit: str = "") -> str:
    """Format a value for a table cell: fixed digits by magnitude, ``—`` for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if metric == "mcnemar_p":
        return "<0.001" if v < 0.001 else f"{v:.3f}"
    if unit == "%":
        return f"{v:.1f}"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 10:
        return f"{v:.2f}"
    if a >= 1:
        return f"{v:.3f}"
    if a >= 0.001:
        return f"{v:.4f}"
    return f"{v:.2e}"


def _heat_style(t: float) -> str:
    """Background for a normalized goodness ``t`` in [0, 1] (1 = best): pale to teal."""
    t = min(max(t, 0.0), 1.0)
    lo, hi = (247, 251, 250), (21, 128, 120)
    rgb = tuple(round(a + (b - a) * t) for a, b in zip(lo, hi, strict=True))
    fg = "#ffffff" if t > 0.55 else "#1f2933"
    return f"background-color:#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x};color:{fg}"


@dataclass
class Column:
    """One column of a method table."""

    metric: str
    region: str = "all"
    device: str = ""
    cell_type: str = "all"
    unit: str = ""
    higher_is_better: bool | None = None
    title: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.metric, self.region, self.device, self.cell_type)

    @property
    def arrow(self) -> str:
        return {True: "↑", False: "↓"}.get(self.higher_is_better, "")

    @property
    def subtitle(self) -> str:
        parts = []
        if self.region not in ("all", ""):
            parts.append(self.region)
        if self.device:
            parts.append(self.device)
        if self.unit:
            parts.append(self.unit)
        return " · ".join(parts)


@dataclass
class Cell:
    text: str = "—"
    ci: str = ""
    best: bool = False
    style: str = ""
    value: float | None = None
    tooltip: str = ""


@dataclass
class Row:
    method: str
    cells: list[Cell]
    reference: bool = False


@dataclass
class Table:
    """Rows are methods (or other labels), columns are measurements."""

    columns: list[Column]
    rows: list[Row]
    caption: str = ""
    row_header: str = "Method"
    notes: list[str] = field(default_factory=list)
    mark: str = "★"
    mark_label: str = "best"  # what the mark says to a screen reader
    name: str = ""  # the table's data-table name in the page (default: its section's id)

    def __bool__(self) -> bool:
        return bool(self.columns and self.rows)


def _direction(records: Iterable[Record]) -> bool | None:
    dirs = {r.higher_is_better for r in records}
    if len(dirs) == 1:
        return next(iter(dirs))
    non_none = dirs - {None}
    if len(non_none) == 1:
        return next(iter(non_none))
    if non_none:
        log.warning("records of one column disagree on higher_is_better; the column is not ranked")
    return None


def _device(r: Record) -> str:
    return str(r.extra.get("device", "")) if r.metric in SPEED_METRICS and isinstance(r.extra, dict) else ""


def best_methods(values: dict[str, float | None], higher_is_better: bool | None) -> set[str]:
    """Methods holding the best finite value (all of them on a tie); empty when not ranked."""
    if higher_is_better is None:
        return set()
    finite_vals = {m: v for m, v in values.items() if finite(v)}
    if not finite_vals:
        return set()
    target = max(finite_vals.values()) if higher_is_better else min(finite_vals.values())
    return {m for m, v in finite_vals.items() if math.isclose(v, target, rel_tol=1e-12, abs_tol=0.0)}


def order_methods(records: Sequence[Record], preferred: Sequence[str] | None = None) -> list[str]:
    """The records' methods: ranked ones first (in ``preferred`` order, else as stored), references last."""
    ms = list(dict.fromkeys(r.method for r in records))
    refs = reference_methods(records)
    if preferred:
        pos = {m: i for i, m in enumerate(preferred)}
        ms.sort(key=lambda m: pos.get(m, len(pos)))
    return [m for m in ms if m not in refs] + [m for m in ms if m in refs]


def _index(records: Iterable[Record]) -> dict[tuple, dict[str, Record]]:
    """``(metric, region, device, cell_type) -> {method: record}``; a later duplicate wins."""
    out: dict[tuple, dict[str, Record]] = {}
    for r in records:
        if r.metric in PAIRWISE_METRICS:  # one record per pair: see mcnemar_matrix, paired_difference_table
            continue
        key = (r.metric, r.region, _device(r), r.cell_type)
        slot = out.setdefault(key, {})
        if r.method in slot:
            log.warning("duplicate record %s for method %s; the last one is shown", key, r.method)
        slot[r.method] = r
    return out


def _method_table(
    index: dict[tuple, dict[str, Record]],
    keys: Sequence[tuple],
    methods: Sequence[str],
    *,
    heat: bool = False,
    show_ci: bool = True,
) -> Table:
    columns: list[Column] = []
    cells: dict[str, list[Cell]] = {m: [] for m in methods}
    refs = reference_methods(r for slot in index.values() for r in slot.values())
    for key in keys:
        recs = index.get(key, {})
        metric, region, device, cell_type = key
        unit = next((r.unit for r in recs.values() if r.unit), UNITS.get(metric, ""))
        ranked = {m: r for m, r in recs.items() if m in methods and m not in refs}
        hib = _direction(ranked.values() or recs.values())
        col = Column(metric, region, device, cell_type, unit, hib, label(metric))
        columns.append(col)
        best = best_methods({m: r.value for m, r in ranked.items()}, hib)
        vals = [r.value for r in ranked.values() if finite(r.value)]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 0.0)
        for m in methods:
            r = recs.get(m)
            if r is None:
                cells[m].append(Cell())
                continue
            c = Cell(text=fmt_value(r.value, metric=metric, unit=unit), value=r.value, best=m in best)
            if show_ci and finite(r.ci_low) and finite(r.ci_high):
                lo_t = fmt_value(r.ci_low, metric=metric, unit=unit)
                c.ci = f"[{lo_t}, {fmt_value(r.ci_high, metric=metric, unit=unit)}]"
            if r.n:
                c.tooltip = f"n = {r.n}"
            if heat and hib is not None and finite(r.value) and m not in refs:
                t = 0.5 if hi == lo else (r.value - lo) / (hi - lo)
                c.style = _heat_style(t if hib else 1.0 - t)
            cells[m].append(c)
    rows = [Row(m, cells[m], m in refs) for m in methods]
    return Table(columns, rows)


def _test(records: Iterable[Record], split: str) -> list[Record]:
    return [r for r in records if r.split == split]


def overall_keys(records: Iterable[Record], split: str = "test") -> list[tuple]:
    """Column keys of every overall (cell_type ``all``) ranked-or-not quality metric, display-ordered."""
    keys = []
    for r in _test(records, split):
        if r.cell_type != "all" or r.metric in SPEED_METRICS or is_descriptive(r.metric):
            continue
        keys.append((r.metric, r.region, "", "all"))
    keys = list(dict.fromkeys(keys))
    head = {(m, reg): i for i, (m, reg) in enumerate(HEADLINE)}
    return sorted(keys, key=lambda k: (head.get((k[0], k[1]), len(head)), keys.index(k)))


def leaderboard(records: Sequence[Record], methods: Sequence[str], *, split: str = "test") -> Table:
    """Methods x headline metrics (overall test records) with CIs and the best value per column marked.

    Rows are sorted by the first column in its direction (best first); reference rows
    (:func:`reference_methods`) come last and are never marked best.
    """
    recs = [r for r in _test(records, split) if r.cell_type == "all" and r.method in methods]
    keys = overall_keys(recs, split)
    head = [k for k in keys if (k[0], k[1]) in set(HEADLINE)]
    keys = head or keys[:8]
    if not keys:
        return Table([], [])
    index = _index(recs)
    first = index.get(keys[0], {})
    hib = _direction(first.values())

    def sort_key(m: str) -> tuple:
        r = first.get(m)
        v = r.value if r is not None and finite(r.value) else None
        if v is None:
            return (1, 0.0)
        return (0, -v if hib is not False else v)

    refs = reference_methods(recs)
    ranked = sorted((m for m in methods if m not in refs), key=sort_key)
    order = ranked + [m for m in methods if m in refs]
    order = [m for m in order if any(m in index.get(k, {}) for k in keys)]
    table = _method_table(index, keys, order)
    table.caption = (
        f"Overall {split} figures; rows sorted by {label(keys[0][0])}. Brackets: 95 % confidence interval "
        "where stored. ★ best value per column in the metric's direction (↑ higher, ↓ lower is better)."
    )
    return table


def all_metrics(records: Sequence[Record], methods: Sequence[str], *, split: str = "test") -> Table:
    """Every overall quality metric (not only the headline ones), methods as rows."""
    recs = [r for r in _test(records, split) if r.cell_type == "all" and r.method in methods]
    keys = overall_keys(recs, split)
    index = _index(recs)
    order = [m for m in methods if any(m in index.get(k, {}) for k in keys)]
    table = _method_table(index, keys, order)
    table.caption = f"All overall {split} metrics stored for the run."
    return table


def speed_table(records: Sequence[Record], methods: Sequence[str]) -> Table:
    """Speed and cost per method and device (any split)."""
    recs = [r for r in records if r.metric in SPEED_METRICS and r.method in methods and r.cell_type == "all"]
    index = _index(recs)
    keys = sorted(index, key=lambda k: (k[2], SPEED_METRICS.index(k[0]), k[1]))
    order = [m for m in methods if any(m in index.get(k, {}) for k in keys)]
    table = _method_table(index, keys, order, show_ci=False)
    env = []
    for r in recs:
        e = r.extra if isinstance(r.extra, dict) else {}
        desc = ", ".join(f"{k} {e[k]}" for k in ("device_name", "image_size") if k in e)
        if desc:
            env.append(f"{e.get('device', '?')}: {desc}")
    env = list(dict.fromkeys(env))
    # conditions of each measurement (cellbench.eval.profiling.speed_conditions); disturbed cells are marked
    col_of = {c.key: i for i, c in enumerate(table.columns)}
    row_of = {row.method: row for row in table.rows}
    disturbed: dict[str, list[str]] = {}
    for r in recs:
        e = r.extra if isinstance(r.extra, dict) else {}
        row, i = row_of.get(r.method), col_of.get((r.metric, r.region, _device(r), r.cell_type))
        if row is None or i is None or "rounds" not in e:
            continue
        cell = row.cells[i]
        load = e.get("load_avg_1min") or {}
        cpw = e.get("cpu_per_wall")
        cond = ", ".join([f"{e.get('rounds')} rounds", f"p90/median {e.get('spread_p90_median')}",
                          f"{e.get('threads')} thread(s)",
                          f"CPU/wall {cpw:.2f}" if isinstance(cpw, (int, float)) else "CPU/wall ?",
                          f"load {load.get('start')} -> {load.get('end')} on {e.get('cpu_count')} CPU(s)"])
        cell.tooltip = "; ".join(t for t in (cell.tooltip, cond) if t)
        if e.get("disturbed"):
            reasons = [str(x) for x in e.get("disturbed_reasons") or []] or ["disturbed"]
            cell.text += " ⚠"
            cell.tooltip += "; DISTURBED: " + "; ".join(reasons)
            key = f"{r.method} ({e.get('device', '?')})"
            disturbed[key] = list(dict.fromkeys(disturbed.get(key, []) + reasons))
    table.caption = "Speed and cost; warm-up runs excluded." + (f" Devices: {'; '.join(env)}." if env else "")
    # the CPU inference engine each network was profiled with (run-all's speed stage picks the fastest
    # within the quality bound: cellbench.eval.profiling.choose_engine)
    chosen: dict[str, str] = {}
    for r in recs:
        e = r.extra if isinstance(r.extra, dict) else {}
        if e.get("engine") and r.method not in chosen:
            rows = {row.get("engine"): row for row in e.get("engines") or [] if isinstance(row, dict)}
            de = (rows.get(e["engine"]) or {}).get("ciede2000_mean")
            said = f" (mean CIEDE2000 {de:.3f} to fp32)" if isinstance(de, float) else ""
            chosen[r.method] = str(e["engine"]) + said
    if chosen:
        table.caption += " CPU engine: " + "; ".join(f"{m} {e}" for m, e in chosen.items()) + "."
    if disturbed:
        table.caption += (" ⚠ disturbed measurement, not to be trusted: "
                          + "; ".join(f"{m}: {', '.join(rs)}" for m, rs in disturbed.items())
                          + ". Re-measure on a quiet machine with `cellbench run-all --redo-speed`"
                            " (docs/speed.md).")
        table.notes.append(table.caption)
    return table


def cell_type_order(cell_types: Iterable[str]) -> list[str]:
    ct = set(cell_types) - {"all"}
    known = [c for c in CLASSES if c in ct]
    return known + sorted(ct - set(known))


def per_cell_type_tables(
    records: Sequence[Record], methods: Sequence[str], *, split: str = "test"
) -> list[Table]:
    """Heat tables methods x cell types for the metrics of :data:`PER_CELL_TYPE` that have data.

    The last column is the overall figure when stored. Colours are scaled per table so that the
    better end (per the metric's direction) is darker; ★ marks the best method per cell type.
    """
    recs = [r for r in _test(records, split) if r.method in methods and not is_descriptive(r.metric)]
    index = _index(recs)
    tables = []
    for metric, regions in PER_CELL_TYPE:
        for region in regions:
            cts = {k[3] for k in index if k[0] == metric and k[1] == region and k[3] != "all"}
            if cts:
                break
        else:
            continue
        keys = [(metric, region, "", ct) for ct in cell_type_order(cts)]
        if (metric, region, "", "all") in index:
            keys.append((metric, region, "", "all"))
        order = [m for m in methods if any(m in index.get(k, {}) for k in keys)]
        t = _method_table(index, keys, order, heat=True, show_ci=False)
        for c in t.columns:
            c.title = c.cell_type
        where = "" if region == "all" else f" ({region})"
        unit = next((c.unit for c in t.columns if c.unit), "")
        arrow = {True: "higher is better", False: "lower is better"}.get(
            t.columns[0].higher_is_better, "not ranked"
        )
        t.caption = f"{label(metric)}{where}{' in ' + unit if unit else ''} per cell type — {arrow}."
        tables.append(t)
    return tables


def mcnemar_matrix(records: Sequence[Record], methods: Sequence[str]) -> Table:
    """Pairwise McNemar p-values as a symmetric matrix (rows and columns: methods).

    Reads records ``metric == "mcnemar_p"`` with ``extra["vs"]``; either direction of a pair
    fills both cells. p < 0.05 is marked.
    """
    pairs: dict[tuple[str, str], Record] = {}
    for r in records:
        if r.metric != "mcnemar_p" or not isinstance(r.extra, dict):
            continue
        other = r.extra.get("vs")
        if not isinstance(other, str):
            continue
        if r.method in methods and other in methods:
            pairs[(r.method, other)] = r
            pairs.setdefault((other, r.method), r)
    if not pairs:
        return Table([], [])
    present = [m for m in methods if any(m in p for p in pairs)]
    columns = [Column("mcnemar_p", title=m) for m in present]
    rows = []
    for a in present:
        cells = []
        for b in present:
            r = pairs.get((a, b))
            if a == b or r is None:
                cells.append(Cell(text="·" if a == b else "—"))
                continue
            c = Cell(text=fmt_value(r.value, metric="mcnemar_p"), value=r.value)
            c.best = finite(r.value) and r.value < 0.05
            stat = r.extra.get("statistic")
            c.tooltip = f"statistic = {stat}" if stat is not None else ""
            if r.n:
                c.tooltip += f"{'; ' if c.tooltip else ''}n = {r.n}"
            cells.append(c)
        rows.append(Row(a, cells))
    return Table(
        columns,
        rows,
        caption="Pairwise McNemar tests on same-class agreement: p-values; ● p < 0.05 "
        "(no multiple-comparison correction).",
        mark="●",
        mark_label="p < 0.05",
    )


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: Table) -> str:
    """A :class:`Table` as a GitHub-flavoured Markdown table (values, CIs in brackets, ★ on the
    best value per column); cell text is escaped so a method name cannot break the table."""
    if not table:
        return ""
    heads = [table.row_header] + [
        c.title + (f" ({c.subtitle})" if c.subtitle else "") + (f" {c.arrow}" if c.arrow else "")
        for c in table.columns
    ]
    lines = ["| " + " | ".join(_md_escape(h) for h in heads) + " |",
             "|---|" + "---:|" * len(table.columns)]
    for row in table.rows:
        cells = [
            (c.text + (f" {c.ci}" if c.ci else "") + (f" {table.mark}" if c.best else ""))
            for c in row.cells
        ]
        name = row.method + (" (reference)" if row.reference else "")
        lines.append("| " + " | ".join(_md_escape(t) for t in [name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def metric_columns(
    records: Sequence[Record], methods: Sequence[str], columns: Sequence[tuple[str, str]], *, split: str = "test"
) -> Table:
    """Methods x the given ``(metric, region)`` overall columns (those with data), in that order."""
    recs = [r for r in _test(records, split) if r.cell_type == "all" and r.method in methods]
    index = _index(recs)
    keys = [(m, reg, "", "all") for m, reg in columns if (m, reg, "", "all") in index]
    if not keys:
        return Table([], [])
    order = [m for m in methods if any(m in index.get(k, {}) for k in keys)]
    return _method_table(index, keys, order)


# --------------------------------------------------------------------------- paired differences


@dataclass(frozen=True)
class Difference:
    """mean(method) - mean(other) of one per-image metric, with its paired bootstrap interval."""

    value: float
    ci_low: float | None
    ci_high: float | None
    n: int
    unit: str
    excludes_zero: bool


def paired_differences(records: Iterable[Record], methods: Sequence[str], *, split: str = "test",
                       ) -> dict[tuple[str, str, str, str], Difference]:
    """``(a, b, metric, region) -> a - b`` from the ``paired_diff`` records (either direction fills both)."""
    out: dict[tuple[str, str, str, str], Difference] = {}
    for r in records:
        if r.metric != "paired_diff" or r.split != split or not isinstance(r.extra, dict):
            continue
        other, metric = r.extra.get("vs"), r.extra.get("metric")
        if not isinstance(other, str) or not isinstance(metric, str) or r.method not in methods or other not in methods:
            continue
        unit = str(r.extra.get("unit", ""))
        excl = bool(r.extra.get("excludes_zero", False))
        d = Difference(r.value, r.ci_low, r.ci_high, r.n, unit, excl)
        out[(r.method, other, metric, r.region)] = d
        flipped = Difference(-r.value, None if r.ci_high is None else -r.ci_high,
                             None if r.ci_low is None else -r.ci_low, r.n, unit, excl)
        out.setdefault((other, r.method, metric, r.region), flipped)
    return out


def _diff_cell(d: Difference, metric: str) -> Cell:
    unit = "%" if d.unit == "pp" else d.unit  # percentage points get the percent digits

    def f(v: float | None) -> str:
        v = v + 0.0 if finite(v) else v  # no "-0.0"
        text = fmt_value(v, metric=metric, unit=unit)
        return "+" + text if finite(v) and v > 0 else text.replace("-", "−")

    c = Cell(text=f(d.value), value=d.value, best=d.excludes_zero)
    if finite(d.ci_low) and finite(d.ci_high):
        c.ci = f"[{f(d.ci_low)}, {f(d.ci_high)}]"
    c.tooltip = f"n = {d.n}" + ("; the interval excludes 0" if d.excludes_zero else "; the interval contains 0")
    return c


def _best_of(records: Sequence[Record], methods: Sequence[str], metric: str, region: str, split: str) -> str | None:
    vals = {r.method: r for r in records if r.metric == metric and r.region == region and r.cell_type == "all"
            and r.split == split and r.method in methods and not r.reference}
    best = best_methods({m: r.value for m, r in vals.items()}, _direction(vals.values()))
    return next((m for m in methods if m in best), None)


def paired_difference_table(records: Sequence[Record], methods: Sequence[str], *, split: str = "test") -> Table:
    """Every method against the best method of each column: the difference, its interval, whether it excludes 0.

    Columns are the per-image metrics with ``paired_diff`` records (:data:`DIFF_COLUMNS` order); the
    best method of a column is the one with the best overall value of that metric (the record's
    direction; the first in ``methods`` on a tie) and shows ``best``; every other cell shows
    ``method - best`` in the metric's unit (percentage points for percent metrics) with its 95 %
    paired bootstrap interval, marked ● when the interval excludes 0.
    """
    refs = reference_methods(records)
    ranked = [m for m in methods if m not in refs]
    diffs = paired_differences(records, ranked, split=split)
    present = {(k[2], k[3]) for k in diffs}
    keys = [k for k in DIFF_COLUMNS if k in present] + sorted(present - set(DIFF_COLUMNS))
    columns, bests = [], []
    for metric, region in keys:
        best = _best_of(records, ranked, metric, region, split)
        if best is None:
            continue
        unit = next((d.unit for k, d in diffs.items() if (k[2], k[3]) == (metric, region)), "")
        hib = _direction([r for r in records if r.metric == metric and r.method in ranked])
        columns.append(Column(metric, region, unit=unit, higher_is_better=hib, title=label(metric)))
        bests.append(best)
    if not columns:
        return Table([], [])
    rows = []
    for m in ranked:
        cells = []
        for col, best in zip(columns, bests, strict=True):
            d = diffs.get((m, best, col.metric, col.region))
            if m == best:
                cells.append(Cell(text="best", tooltip="the best method of this column"))
            elif d is None:
                cells.append(Cell())
            else:
                cells.append(_diff_cell(d, col.metric))
        if any(c.text != "—" for c in cells):
            rows.append(Row(m, cells))
    n = max((d.n for d in diffs.values()), default=0)
    resamples = next((r.extra.get("resamples") for r in records if r.metric == "paired_diff"
                      and isinstance(r.extra, dict)), None)
    return Table(columns, rows, name="paired-diff", mark="●", mark_label="the interval excludes 0", caption=(
        "Difference of each method from the best method of the column (method − best, in the metric's unit; "
        "percentage points for percent metrics) with a 95 % paired bootstrap interval "
        f"({resamples or 'B'} resamples of the {n or 'N'} test images, the same images for both methods). "
        "● the interval excludes 0: the difference is significant at the 5 % level (no multiple-comparison "
        "correction). The arrow gives the metric's direction."))


def paired_difference_pairs(records: Sequence[Record], methods: Sequence[str], *, split: str = "test") -> Table:
    """Every unordered pair ``A − B`` of ``methods`` (in the order given) against the per-image metrics,
    with the bootstrap intervals (● excludes 0) and the McNemar p-value on agreement."""
    from itertools import combinations

    diffs = paired_differences(records, methods, split=split)
    present = {(k[2], k[3]) for k in diffs}
    keys = [k for k in DIFF_COLUMNS if k in present]
    mc = mcnemar_matrix(records, methods)
    p_values: dict[tuple[str, str], Cell] = {}
    for row in mc.rows:
        for col, cell in zip(mc.columns, row.cells, strict=True):
            p_values[(row.method, col.title)] = cell
    columns = [Column(m, reg, unit=next((d.unit for k, d in diffs.items() if (k[2], k[3]) == (m, reg)), ""),
                      higher_is_better=_direction([r for r in records if r.metric == m]), title=label(m))
               for m, reg in keys]
    if p_values:
        columns.append(Column("mcnemar_p", title=label("mcnemar_p")))
    rows = []
    for a, b in combinations(methods, 2):
        cells = [(_diff_cell(d, m) if (d := diffs.get((a, b, m, reg))) else Cell()) for m, reg in keys]
        if p_values:
            p = p_values.get((a, b))
            cells.append(Cell(text=p.text, value=p.value) if p else Cell())
        if any(c.text != "—" for c in cells):
            rows.append(Row(f"{a} − {b}", cells))
    return Table(columns, rows, row_header="Pair", name="paired-pairs", mark="●", mark_label="the interval excludes 0",
                 caption=(
        "A − B per pair: difference of the means with a 95 % paired bootstrap interval (● excludes 0); "
        "McNemar p on same-class agreement."))
