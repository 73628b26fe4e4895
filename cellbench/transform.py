"""Apply a saved normalizer to every image of a folder tree (``cellbench transform``).

Safety rules:

* No output may land on an input, nor anywhere inside the input tree (it would be read as an
  input by the next run): input ``tin/a`` with output ``tin`` maps ``tin/a/a/x.png`` onto the
  input ``tin/a/x.png`` and is refused before anything is written.
* The output folder carries the fingerprint of the model that wrote it, in
  ``OUT/.cellbench-transform.json`` (method, SHA-256 of the options, SHA-256 of
  ``state.safetensors``). A second run of the same model resumes (finished outputs are skipped);
  another model, or outputs of unknown origin, are refused unless ``overwrite`` (which redoes
  every image and records the new model).
"""

from __future__ import annotations

import hashlib
import json
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
from .methods.base import STATE_FILE, read_meta
from .tensors import to_tensor, to_uint8

log = logging.getLogger(__name__)

MANIFEST = ".cellbench-transform.json"


@dataclass
class TransformSummary:
    written: int = 0
    existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _inputs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def model_fingerprint(model_dir: str | os.PathLike) -> dict:
    """``{method, params_sha256, state_sha256}`` of a model folder written by ``cellbench fit``."""
    from .fs import sha256_file

    d = Path(model_dir)
    meta = read_meta(d)
    params = json.dumps(meta.get("params", {}), sort_keys=True, default=str)
    state = d / STATE_FILE
    return {"method": meta["method"], "params_sha256": hashlib.sha256(params.encode()).hexdigest(),
            "state_sha256": sha256_file(state) if state.exists() else None}


def _check_paths(src: Path, dst: Path, files: list[Path]) -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs; refuses any output that is an input or lies inside the input tree."""
    if dst == src or src in dst.parents:
        raise ConfigError(f"{dst}: the output folder must not be the input folder or inside it; "
                          "choose an output folder outside the input tree")
    inputs = {f.resolve() for f in files}
    pairs = []
    for f in files:
        out = dst / f.relative_to(src)
        real = out.resolve()
        if real in inputs or out in inputs or src in real.parents:
            raise ConfigError(f"{dst}: the output of {f} would be {out}, inside the input folder {src} "
                              f"{'(an input image)' if real in inputs else ''}; choose an output folder outside "
                              "the input tree")
        pairs.append((f, out))
    return pairs


def _check_manifest(dst: Path, fingerprint: dict, todo: list[tuple[Path, Path]], overwrite: bool) -> None:
    path = dst / MANIFEST
    if overwrite:
        return
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            old = {k: old.get(k) for k in fingerprint}
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); pass --overwrite to redo the folder") from None
        if old != fingerprint:
            differ = [k for k in fingerprint if old.get(k) != fingerprint[k]]
            raise ConfigError(f"{dst}: holds outputs of another model ({', '.join(differ)} differ: "
                              f"{old.get('method')!r} vs {fingerprint['method']!r}); use another output folder "
                              "or pass --overwrite to redo every image with this model")
        return
    made = next((out for _, out in todo if out.exists()), None)
    if made is not None:
        raise ConfigError(f"{dst}: {made} exists but the folder has no {MANIFEST} naming the model that wrote it; "
                          "use another output folder or pass --overwrite")


def transform_folder(model_dir: str | os.PathLike, input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                     *, batch_size: int = 16, device: str = "cpu", overwrite: bool = False,
                     progress: bool = True, engine: str = "eager") -> TransformSummary:
    """Transform every image under ``input_dir`` into ``output_dir`` (same relative names).

    Images are batched by size. Outputs of the same model that already exist are skipped unless
    ``overwrite`` (so an interrupted run resumes); see the module docstring for the rules that
    keep inputs safe and outputs tied to their model. Unreadable inputs are reported and skipped.
    """
    from .fs import atomic_write

    src, dst = Path(input_dir).resolve(), Path(output_dir).resolve()
    if not src.is_dir():
        raise ConfigError(f"{src}: input folder not found")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"{dst}: is an existing file; the output must be a folder")
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    files = _inputs(src)
    if not files:
        raise ConfigError(f"{src}: no PNG/JPEG/BMP/TIFF images found")
    pairs = _check_paths(src, dst, files)
    fingerprint = model_fingerprint(model_dir)
    _check_manifest(dst, fingerprint, pairs, overwrite)
    norm = load_normalizer(model_dir).to(device)
    if engine != "eager":  # ccgan/pcnet on the CPU: cellbench.nets.engines (folded, onnxruntime, bf16, ...)
        from .nets.engines import with_engine

        norm = with_engine(norm, engine)
    summary = TransformSummary()
    todo = []
    for f, out in pairs:
        if out.exists() and not overwrite:
            summary.existing += 1
        else:
            todo.append((f, out))
    # the fingerprint goes first, so even an interrupted run's outputs are tied to their model
    atomic_write(dst / MANIFEST, json.dumps({**fingerprint, "model_dir": str(Path(model_dir).resolve())}, indent=1))

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
