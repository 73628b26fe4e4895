"""The run folder's ``artifacts/``: confusion matrices, the sample grid, training curves and per-image values.

Rebuilt from the stages on every run, atomically: everything is written into a temporary
sibling folder which then replaces ``artifacts/`` (two renames), so a run killed mid-rebuild
leaves the previous artifacts whole. Methods not rebuilt by a ``compare`` keep their confusion
matrix, training curve and per-image values.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fs import atomic_dir
from .track import Evaluation, Track

__all__ = ["write_artifacts", "ARTIFACTS", "DIFF_MAX"]

ARTIFACTS = "artifacts"
#: The difference maps show CIEDE2000 from 0 (black) to this value (saturated).
DIFF_MAX = 20.0


def write_artifacts(run_dir: Path, track: Track, methods: Sequence[str], evals: dict[str, Evaluation],
                    classes: Sequence[str], y_pred: np.ndarray, curves: dict[str, Path], *, per_class: int) -> Path:
    """Rebuild ``run_dir/artifacts`` (see the module docstring); returns its path."""
    target = Path(run_dir) / ARTIFACTS
    for stale in Path(run_dir).glob(f".{ARTIFACTS}.*"):  # left by a killed rebuild
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(target) as tmp:
        _confusions(tmp / "confusion", track, methods, evals, list(classes), y_pred)
        _samples(tmp / "samples", track, methods, evals, per_class)
        (tmp / "curves").mkdir()
        for name, path in curves.items():
            shutil.copyfile(path, tmp / "curves" / f"{name}.jsonl")
        _per_image(tmp / "per-image", track, methods)
        _keep_others(target, tmp, set(methods))
    return target


def _keep_others(old: Path, new: Path, rebuilt: set[str]) -> None:
    """Confusion matrices and curves of methods this run did not rebuild stay in place."""
    for sub, suffix in (("confusion", ".json"), ("curves", ".jsonl"), ("per-image", ".csv")):
        for f in sorted((old / sub).glob(f"*{suffix}")) if (old / sub).is_dir() else []:
            if f.name[: -len(suffix)] not in rebuilt and not (new / sub / f.name).exists():
                (new / sub).mkdir(exist_ok=True)
                shutil.copyfile(f, new / sub / f.name)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8")


def _matrix(truth_labels: Sequence[str], pred: np.ndarray, classes: list[str]) -> list[list[int]]:
    idx = {c: i for i, c in enumerate(classes)}
    mat = np.zeros((len(classes), len(classes)), dtype=int)
    for lab, p in zip(truth_labels, pred, strict=True):
        if lab in idx:  # classes the classifier does not know have no row
            mat[idx[lab], int(p)] += 1
    return mat.tolist()


def _confusions(folder: Path, track: Track, methods: Sequence[str], evals: dict[str, Evaluation],
                classes: list[str], y_pred: np.ndarray) -> None:
    """The classifier's own confusion matrix on real Y, and one per method on its test outputs."""
    folder.mkdir(parents=True)
    _write_json(folder / "classifier.json", {"classes": classes, "title": "classifier on real Y (test)",
                                             "matrix": _matrix(track.reference_labels(), y_pred, classes)})
    labels = track.test_labels()
    for m in methods:
        _write_json(folder / f"{m}.json", {"classes": classes, "title": track.confusion_title.format(m=m),
                                           "matrix": _matrix(labels, evals[m].pred, classes)})


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def _samples(folder: Path, track: Track, methods: Sequence[str], evals: dict[str, Evaluation], per_class: int) -> None:
    """The image grid: one row per chosen test cell, each method's output, and ΔE00 maps vs the target."""
    from ..eval.image import ciede2000, rgb_to_lab
    from ..io import write_image

    folder.mkdir(parents=True)
    columns, rows = track.sample_rows({m: evals[m].outputs for m in methods}, per_class)
    manifest_rows = []
    for row in rows:
        stem = _safe(f"{row.cell_type}-{row.id}")
        target = rgb_to_lab(row.images[row.target][None].float() / 255.0) if row.target else None
        images, diffs = {}, {}
        for col, img in row.images.items():
            rel = f"samples/{stem}_{_safe(col)}.png"
            write_image(folder.parent / rel, img.permute(1, 2, 0).numpy())
            images[col] = rel
            if target is not None and col != row.target:
                de = ciede2000(rgb_to_lab(img[None].float() / 255.0), target)[0].numpy()
                rel_d = f"samples/{stem}_{_safe(col)}_diff.png"
                write_image(folder.parent / rel_d, _heatmap(de, vmax=DIFF_MAX))
                diffs[col] = rel_d
        manifest_rows.append({"cell_type": row.cell_type, "id": row.id, "images": images, "diffs": diffs})
    manifest: dict[str, Any] = {"columns": columns, "rows": manifest_rows}
    if any(r.target for r in rows):
        manifest["diff"] = f"CIEDE2000 vs {rows[0].target}, 0 (black) to {DIFF_MAX:g}"
    _write_json(folder / "manifest.json", manifest)


def _heatmap(values: np.ndarray | torch.Tensor, vmax: float) -> np.ndarray:
    import matplotlib

    rgba = matplotlib.colormaps["magma"](np.clip(np.asarray(values) / vmax, 0, 1))
    return (rgba[..., :3] * 255).round().astype(np.uint8)



def _per_image(folder: Path, track: Track, methods: Sequence[str]) -> None:
    """``per-image/<method>.csv``: one row per test image (``index``, ``id``, ``label``) and one column per
    per-image value (``<metric>/<region>``, e.g. ``agreement/all`` as 1/0, ``ciede2000_mean/wbc``;
    empty where undefined, ``inf`` for an identical image's PSNR), for the paired track's methods
    evaluated in this run."""
    import csv

    from ..eval.evaluate import PAIRED_DIFF_KEYS, per_image_key

    get = getattr(track, "per_image_values", None)
    if get is None:
        return
    order = {per_image_key(m, r): i for i, (m, r) in enumerate(PAIRED_DIFF_KEYS)}
    ids = list(getattr(track, "test_ids", lambda: [])())
    labels = track.test_labels()
    for m in methods:
        values = get(m)
        if not values:
            continue
        keys = sorted(values, key=lambda k: (order.get(k, len(order)), k))
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{m}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "id", "label", *keys])
            for i, lab in enumerate(labels):
                cells = []
                for k in keys:
                    v = float(values[k][i])
                    cells.append("" if np.isnan(v) else repr(v))  # inf stays (an identical image's PSNR)
                w.writerow([i, ids[i] if i < len(ids) else "", lab, *cells])
