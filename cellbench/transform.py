"""Apply a saved normalizer to every image of a folder tree (``cellbench transform``)."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, ImageReadError
from .io import is_image_file, read_image, write_image
from .methods import load_normalizer
from .tensors import to_tensor, to_uint8

log = logging.getLogger(__name__)


@dataclass
class TransformSummary:
    written: int = 0
    existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _inputs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def transform_folder(model_dir: str | os.PathLike, input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                     *, batch_size: int = 16, device: str = "cpu", overwrite: bool = False,
                     progress: bool = True) -> TransformSummary:
    """Transform every image under ``input_dir`` into ``output_dir`` (same relative names).

    Images are batched by size. Outputs that already exist are skipped unless ``overwrite``
    (so an interrupted run resumes). The output folder may not be, or contain, the input folder's
    files: inputs are never overwritten. Unreadable inputs are reported and skipped.
    """
    src, dst = Path(input_dir).resolve(), Path(output_dir).resolve()
    if not src.is_dir():
        raise ConfigError(f"{src}: input folder not found")
    if dst == src or src in dst.parents:
        raise ConfigError(f"{dst}: the output folder must not be the input folder or inside it")
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    norm = load_normalizer(model_dir).to(device)
    files = _inputs(src)
    if not files:
        raise ConfigError(f"{src}: no PNG/JPEG/BMP/TIFF images found")
    summary = TransformSummary()
    todo = []
    for f in files:
        out = dst / f.relative_to(src)
        if out.exists() and not overwrite:
            summary.existing += 1
        else:
            todo.append((f, out))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"{norm.name}", unit="img")
    pending: dict[tuple, list[tuple[Path, np.ndarray]]] = defaultdict(list)

    def flush(key) -> None:
        batch = pending.pop(key)
        with torch.inference_mode():
            out = norm.transform(to_tensor(np.stack([a for _, a in batch])).to(device))
        for (target, _), img in zip(batch, to_uint8(out), strict=True):
            write_image(target, img)
            summary.written += 1
        if bar:
            bar.update(len(batch))

    for f, out in todo:
        try:
            arr = read_image(f)
        except ImageReadError as exc:
            summary.failed.append((str(f), str(exc)))
            log.warning("skipping %s", exc)
            if bar:
                bar.update()
            continue
        pending[arr.shape].append((out, arr))
        if len(pending[arr.shape]) >= batch_size:
            flush(arr.shape)
    for key in list(pending):
        flush(key)
    if bar:
        bar.close()
    return summary
