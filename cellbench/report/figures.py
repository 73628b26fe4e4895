"""Figures of the report: matplotlib (Agg, no pyplot state) rendered to PNG data URIs.

Each function takes stored records or loaded artifacts and returns a ``data:image/png;base64``
URI, or ``None`` when it has nothing to draw. Text that came from user files (method, class and
run names) is passed through :func:`_plain` so that matplotlib never interprets ``$...$`` as
mathtext.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ..results import Record
from .artifacts import Confusion, Curve, png_data_uri
from .tables import cell_type_order, finite, label, reference_methods

DPI = 110
REGION_ORDER = ("image", "wbc", "nucleus", "cytoplasm", "red_cell", "background", "all")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _plain(s: object) -> str:
    """A user string made literal for matplotlib (no mathtext)."""
    return str(s).replace("$", r"\$")


def _new(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, facecolor="white")
    return png_data_uri(buf.getvalue())


def method_colours(methods: Sequence[str]) -> dict[str, tuple]:
    """One stable colour per method (tab10, then tab20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if len(methods) <= 10 else colormaps["tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)


# --------------------------------------------------------------------------- colour statistics


def colour_delta_e_heatmaps(
    records: Sequence[Record], methods: Sequence[str], *, split: str = "test"
) -> str | None:
    """CIEDE2000 between mean Lab of G(x) and of y: one heatmap per region, methods x cell types."""
    recs = [r for r in records if r.metric == "colour_delta_e" and r.method in methods and r.split == split]
    if not recs:
        return None
    regions = sorted(
        {r.region for r in recs}, key=lambda g: (REGION_ORDER.index(g) if g in REGION_ORDER else 99, g)
    )
    cts = cell_type_order(r.cell_type for r in recs)
    if any(r.cell_type == "all" for r in recs):
        cts.append("all")
    ms = [m for m in methods if any(r.method == m for r in recs)]
    vals = {(r.method, r.region, r.cell_type): r.value for r in recs}
    finite_vals = [v for v in vals.values() if finite(v)]
    vmax = max(finite_vals) if finite_vals else 1.0
    ncol = min(2, len(regions))
    nrow = math.ceil(len(regions) / ncol)
    w = min(13.0, 1.6 + ncol * (1.2 + 0.62 * len(cts)))
    fig = _new(w, nrow * (0.9 + 0.34 * len(ms)))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    im = None
    for k, region in enumerate(regions):
        ax = axes[k // ncol][k % ncol]
        a = np.array([[vals.get((m, region, c), np.nan) for c in cts] for m in ms], dtype=float)
        im = ax.imshow(np.ma.masked_invalid(a), cmap="YlOrRd", vmin=0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(cts)), [_plain(c) for c in cts], rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(ms)), [_plain(m) for m in ms], fontsize=8)
        ax.set_title(f"region: {_plain(region)}", fontsize=9)
        for i in range(len(ms)):
            for j in range(len(cts)):
                if np.isfinite(a[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{a[i, j]:.1f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if a[i, j] > 0.6 * vmax else "#111",
                    )
    for k in range(len(regions), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="ΔE00")
    return _uri(fig)


def lab_means_scatter(
    records: Sequence[Record], methods: Sequence[str], *, split: str = "test"
) -> str | None:
    """Mean L*, a*, b* of G(x) (y axis) against y's (x axis, ``extra["target"]``); the diagonal is perfect."""
    chans = ("lab_L_mean", "lab_a_mean", "lab_b_mean")
    recs = [
        r
        for r in records
        if r.metric in chans
        and r.method in methods
        and r.split == split
        and isinstance(r.extra, dict)
        and finite(r.extra.get("target"))
        and finite(r.value)
    ]
    if not recs:
        return None
    ms = [m for m in methods if any(r.method == m for r in recs)]
    colours = method_colours(ms)
    regions = sorted(
        {r.region for r in recs}, key=lambda g: (REGION_ORDER.index(g) if g in REGION_ORDER else 99, g)
    )
    markers = {g: _MARKERS[i % len(_MARKERS)] for i, g in enumerate(regions)}
    fig = _new(12.0, 4.2)
    axes = fig.subplots(1, 3)
    for ax, ch in zip(axes, chans, strict=True):
        rs = [r for r in recs if r.metric == ch]
        _style(ax)
        if not rs:
            ax.set_visible(False)
            continue
        xs = [r.extra["target"] for r in rs]
        ys = [r.value for r in rs]
        lo, hi = min(xs + ys), max(xs + ys)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot(
            [lo - pad, hi + pad], [lo - pad, hi + pad], color="#9ca3af", linewidth=1, linestyle="--", zorder=1
        )
        for r in rs:
            ax.scatter(
                r.extra["target"],
                r.value,
                color=colours[r.method],
                marker=markers[r.region],
                s=22,
                alpha=0.85,
                edgecolor="white",
                linewidth=0.4,
                zorder=2,
            )
        name = ch.split("_")[1]
        ax.set_xlabel(f"{name}* of y (target)", fontsize=9)
        ax.set_ylabel(f"{name}* of G(x)", fontsize=9)
        ax.set_title(f"mean {name}*", fontsize=10)
        ax.tick_params(labelsize=8)
    handles = [axes[0].scatter([], [], color=colours[m], marker="o", label=_plain(m)) for m in ms]
    handles += [
        axes[0].scatter([], [], color="#6b7280", marker=markers[g], label=f"region: {_plain(g)}")
        for g in regions
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return _uri(fig)


# --------------------------------------------------------------------------- confusion


def confusion_figure(conf: Confusion) -> str:
    """Counts annotated; colour = row-normalized fraction (rows: reference class, columns: predicted)."""
    m = conf.matrix
    k = len(conf.classes)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(6.5, 1.6 + 0.45 * k)
    fig = _new(side + 0.6, side)
    ax = fig.subplots()
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ticks = [_plain(c) for c in conf.classes]
    ax.set_xticks(range(k), ticks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), ticks, fontsize=8)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("reference", fontsize=9)
    ax.set_title(_plain(conf.title), fontsize=10)
    integral = np.allclose(m, np.round(m))
    for i in range(k):
        for j in range(k):
            txt = f"{int(round(m[i, j]))}" if integral else f"{m[i, j]:.2f}"
            ax.text(
                j,
                i,
                txt,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if frac[i, j] > 0.55 else "#111",
            )
    return _uri(fig)


# --------------------------------------------------------------------------- speed vs quality


def _pick(
    records: Sequence[Record], metric: str, regions: Sequence[str], split: str
) -> tuple[str, dict[str, Record]]:
    for region in regions:
        got = {
            r.method: r
            for r in records
            if r.metric == metric and r.region == region and r.cell_type == "all" and r.split == split
        }
        if got:
            return region, got
    return "", {}


def speed_quality(records: Sequence[Record], methods: Sequence[str], *, split: str = "test") -> str | None:
    """Throughput (log x; latency when no throughput) against ΔE00 mean and against agreement."""
    refs = reference_methods(records)
    ms = [m for m in methods if m not in refs]
    speed: dict[str, Record] = {}
    speed_metric = ""
    for metric in ("throughput_ips", "latency_ms_b1"):
        by_dev: dict[str, dict[str, Record]] = {}
        for r in records:
            if (
                r.metric == metric
                and r.method in ms
                and r.cell_type == "all"
                and finite(r.value)
                and r.value > 0
            ):
                dev = str(r.extra.get("device", "")) if isinstance(r.extra, dict) else ""
                by_dev.setdefault(dev, {})[r.method] = r
        if by_dev:
            dev = "cpu" if "cpu" in by_dev else sorted(by_dev)[0]
            speed, speed_metric = by_dev[dev], metric
            speed_dev = dev
            break
    if not speed:
        return None
    panels = []
    region, de = _pick(records, "ciede2000_mean", ("wbc", "image", "all"), split)
    if de:
        panels.append((f"{label('ciede2000_mean')} ({region}) ↓", de))
    _, ag = _pick(records, "agreement", ("all",), split)
    if ag:
        panels.append(("Agreement (%) ↑", ag))
    panels = [(t, d) for t, d in panels if any(m in speed and finite(d[m].value) for m in d)]
    if not panels:
        return None
    colours = method_colours(ms)
    fig = _new(5.2 * len(panels) + 0.4, 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    unit = "images/s" if speed_metric == "throughput_ips" else "ms, batch 1"
    for ax, (title, q) in zip(axes, panels, strict=True):
        _style(ax)
        for m in ms:
            if m in speed and m in q and finite(q[m].value):
                x, y = speed[m].value, q[m].value
                ax.scatter(x, y, color=colours[m], s=40, edgecolor="white", linewidth=0.6, zorder=3)
                if finite(q[m].ci_low) and finite(q[m].ci_high):
                    ax.plot([x, x], [q[m].ci_low, q[m].ci_high], color=colours[m], linewidth=1, zorder=2)
                ax.annotate(_plain(m), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
        ax.set_xlabel(
            f"{label(speed_metric)} ({unit}{', ' + _plain(speed_dev) if speed_dev else ''})", fontsize=9
        )
        ax.set_ylabel(title, fontsize=9)
        ax.tick_params(labelsize=8)
    return _uri(fig)


# --------------------------------------------------------------------------- training curves


def curve_panels(curve: Curve, *, max_panels: int = 9) -> tuple[list[str], float | None]:
    """The quantities :func:`curve_figure` plots, in order (batch-norm gap first, ``bn_frozen`` not a
    panel), and the first iteration trained on frozen batch-norm statistics (``None``: never)."""
    frozen = np.asarray(curve.series.get("bn_frozen", []), dtype=float)
    x = np.asarray(curve.x, dtype=float)
    frozen_from = float(x[frozen == 1].min()) if (frozen == 1).any() else None
    keys = sorted((k for k in curve.series if k != "bn_frozen"), key=lambda k: not k.startswith("bn_gap_"))
    return keys[:max_panels], frozen_from


def curve_figure(curve: Curve, *, max_panels: int = 9) -> str:
    """One small panel per logged quantity of one training log; the generators' batch-norm
    train/eval gap (``bn_gap_*``, cellbench.train.loop) first, as it says whether the losses
    describe the network that inference runs. Iterations trained on frozen batch-norm statistics
    (``bn_frozen``, from ``bn_freeze_from``) are shaded: there training computes the inference
    function, and the gap panel shows the distance of batch statistics instead."""
    keys, frozen_from = curve_panels(curve, max_panels=max_panels)
    x = np.asarray(curve.x, dtype=float)
    ncol = min(3, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig = _new(3.6 * ncol + 0.3, 2.5 * nrow + 0.3)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for k, key in enumerate(keys):
        ax = axes[k // ncol][k % ncol]
        _style(ax)
        if frozen_from is not None:
            ax.axvspan(frozen_from, float(np.nanmax(x)), color="#94a3b8", alpha=0.18, linewidth=0,
                       label="batch norm frozen")
        y = np.asarray(curve.series[key], dtype=float)
        ok = np.isfinite(y)
        ax.plot(
            x[ok], y[ok], color="#0f766e", linewidth=1.1, marker="o" if ok.sum() <= 30 else None, markersize=3
        )
        title = _plain(key) + (" (shaded: frozen BN)" if frozen_from is not None and key.startswith("bn_gap_") else "")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(_plain(curve.x_name), fontsize=8)
        ax.tick_params(labelsize=7)
    for k in range(len(keys), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    return _uri(fig)
