"""Reading a run folder's stored artifacts for the report (never recomputing anything).

Layout (docs/run-folder.md)::

    artifacts/confusion/<method>.json   {"classes": [...], "matrix": [[int]], "title": "..."}
    artifacts/samples/manifest.json     {"columns": [...], "rows": [{"cell_type", "id", "images", "diffs"}]}
    artifacts/curves/<name>.jsonl       one JSON object per line

Every reader returns data plus human-readable notes instead of raising on a damaged artifact, so one
bad file drops one figure, not the report. Paths named inside artifacts must stay inside
``artifacts/`` (a manifest cannot make the report embed an arbitrary file).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from ..io import read_image

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts"
#: Longest side of an image embedded in a grid; larger stored images are downscaled (in memory).
MAX_EMBED_SIDE = 384
GRID_JPEG_QUALITY = 90
#: grid cells are shown at 112 px: embed at ~1.6x for high-density screens, no more
GRID_EMBED_SIDE = 176
#: Most points per curve series kept for plotting (evenly strided).
MAX_CURVE_POINTS = 2000


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def array_to_png(image: np.ndarray, *, max_side: int = MAX_EMBED_SIDE) -> bytes:
    """Encode ``uint8 (H, W, 3)`` as PNG bytes in memory, downscaled to ``max_side`` if larger."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _inside(base: Path, rel: str) -> Path | None:
    """``base / rel`` when it resolves inside ``base``; ``None`` otherwise."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        return None
    p = (base / rel).resolve()
    return p if p.is_relative_to(base.resolve()) else None


def _load_json(path: Path, notes: list[str]) -> object | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name}: unreadable JSON ({exc}); skipped")
        log.warning("%s: unreadable JSON (%s)", path, exc)
        return None


# --------------------------------------------------------------------------- samples


@dataclass
class GridImage:
    uri: str = ""
    missing: str = ""  # why there is no image (shown instead)


@dataclass
class GridRow:
    cell_type: str
    id: str
    images: list[GridImage]
    diffs: list[GridImage | None]  # None: this column has no difference map


@dataclass
class SampleGrid:
    columns: list[str]
    rows: list[GridRow]
    notes: list[str] = field(default_factory=list)

    @property
    def has_diffs(self) -> bool:
        return any(d is not None for r in self.rows for d in r.diffs)


def array_to_jpeg_uri(image: np.ndarray, *, max_side: int = GRID_EMBED_SIDE, quality: int = GRID_JPEG_QUALITY) -> str:
    """``data:image/jpeg;base64,...`` of ``uint8 (H, W, 3)``, no chroma subsampling (colours are the point).

    Grid images are embedded as JPEG: a run's grid holds hundreds of noisy cell images, which as
    PNG made a ~30 MB report; at quality 90 with 4:4:4 sampling the colour error is far below the
    differences the grid shows (the CIEDE2000 figures themselves come from the stored results).
    """
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _embed(artifacts: Path, rel: object, notes: list[str]) -> GridImage:
    p = _inside(artifacts, rel) if isinstance(rel, str) else None
    if p is None:
        notes.append(f"image path {rel!r} is not inside artifacts/; not embedded")
        return GridImage(missing="refused path")
    try:
        return GridImage(uri=array_to_jpeg_uri(read_image(p)))
    except ImageReadError as exc:
        notes.append(str(exc))
        log.warning("%s", exc)
        return GridImage(missing="unreadable")


def load_samples(run_dir: Path, methods: list[str] | None = None) -> SampleGrid | None:
    """The figure-10 style grid from ``artifacts/samples/manifest.json``; ``None`` when absent.

    ``methods`` restricts the method columns (``X`` and ``Y`` and any column not a method
    stay).
    """
    artifacts = run_dir / ARTIFACTS
    path = artifacts / "samples" / "manifest.json"
    if not path.is_file():
        return None
    notes: list[str] = []
    data = _load_json(path, notes)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("columns"), list)
        or not isinstance(data.get("rows"), list)
    ):
        return SampleGrid([], [], notes or [f"{path.name}: expected {{'columns': [...], 'rows': [...]}}"])
    columns = [str(c) for c in data["columns"]]
    if methods is not None:
        keep = set(methods) | {"X", "Y"}
        columns = [c for c in columns if c in keep]
    rows = []
    for i, row in enumerate(data["rows"]):
        if not isinstance(row, dict):
            notes.append(f"{path.name}: row {i} is not an object; skipped")
            continue
        imgs = row.get("images") if isinstance(row.get("images"), dict) else {}
        diffs = row.get("diffs") if isinstance(row.get("diffs"), dict) else {}
        images = [_embed(artifacts, imgs[c], notes) if c in imgs else GridImage(missing="—") for c in columns]
        drow = [_embed(artifacts, diffs[c], notes) if c in diffs else None for c in columns]
        rows.append(GridRow(str(row.get("cell_type", "")), str(row.get("id", "")), images, drow))
    return SampleGrid(columns, rows, notes)


# --------------------------------------------------------------------------- confusion


@dataclass
class Confusion:
    name: str
    title: str
    classes: list[str]
    matrix: np.ndarray  # (K, K) int, rows = reference class, cols = predicted


def load_confusions(run_dir: Path, methods: list[str] | None = None) -> tuple[list[Confusion], list[str]]:
    """Every valid ``artifacts/confusion/*.json`` (restricted to ``methods`` when given)."""
    folder = run_dir / ARTIFACTS / "confusion"
    notes: list[str] = []
    out: list[Confusion] = []
    if not folder.is_dir():
        return out, notes
    for path in sorted(folder.glob("*.json")):
        if methods is not None and path.stem not in methods:
            continue
        data = _load_json(path, notes)
        if data is None:
            continue
        try:
            classes = [str(c) for c in data["classes"]]
            m = np.asarray(data["matrix"], dtype=np.float64)
            if m.shape != (len(classes), len(classes)) or not np.all(np.isfinite(m)) or (m < 0).any():
                raise ValueError(f"matrix shape {m.shape} for {len(classes)} classes, or bad values")
        except (KeyError, TypeError, ValueError) as exc:
            notes.append(f"{path.name}: not a confusion matrix ({exc}); skipped")
            continue
        title = data.get("title") if isinstance(data.get("title"), str) and data.get("title") else path.stem
        out.append(Confusion(path.stem, title, classes, m))
    return out, notes


# --------------------------------------------------------------------------- curves


@dataclass
class Curve:
    name: str
    x_name: str
    x: list[float]
    series: dict[str, list[float]]  # y values aligned with x (NaN where a line lacks the key)


def load_curves(run_dir: Path, methods: list[str] | None = None) -> tuple[list[Curve], list[str]]:
    """Training logs from ``artifacts/curves/*.jsonl``; bad lines are skipped and counted."""
    folder = run_dir / ARTIFACTS / "curves"
    notes: list[str] = []
    out: list[Curve] = []
    if not folder.is_dir():
        return out, notes
    for path in sorted(folder.glob("*.jsonl")):
        if methods is not None and path.stem not in methods:
            continue
        rows, bad = [], 0
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            notes.append(f"{path.name}: unreadable ({exc}); skipped")
            continue
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(obj, dict):
                rows.append(obj)
            else:
                bad += 1
        if bad:
            notes.append(f"{path.name}: {bad} malformed line(s) skipped")
        if not rows:
            continue
        x_name = next((k for k in ("iteration", "step", "epoch") if any(k in r for r in rows)), "")
        stride = max(1, math.ceil(len(rows) / MAX_CURVE_POINTS))
        # rows holding a key that only some lines log (e.g. the batch-norm gap every sample_every
        # iterations) are kept whatever the stride, or striding could drop every one of them
        seen = Counter(k for r in rows for k in r)
        sparse = {k for k, c in seen.items() if c * stride <= len(rows)}
        rows = [r for i, r in enumerate(rows) if i % stride == 0 or not sparse.isdisjoint(r)]
        x = [float(r.get(x_name, i)) if _num(r.get(x_name, i)) else float(i) for i, r in enumerate(rows)]
        keys = [
            k
            for k in dict.fromkeys(k for r in rows for k in r)
            if k not in (x_name, "iteration", "step", "epoch")
        ]
        series = {}
        for k in keys:
            ys = [float(r[k]) if _num(r.get(k)) else math.nan for r in rows]
            if any(math.isfinite(y) for y in ys):
                series[k] = ys
        if series:
            out.append(Curve(path.stem, x_name or "line", x, series))
    return out, notes


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
