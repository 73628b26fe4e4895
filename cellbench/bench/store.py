"""Datasets, outputs and records in stage folders: uint8 safetensors + JSON, written atomically.

Images are stored as uint8 (``round(255 x)``), as the benchmark has always evaluated them: a
reloaded set is bit-identical to what every stage saw on the first run.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data.sets import LabelledSet, PairedSet
from ..results import Record
from ..tensors import as_float01
from .cache import Stage

__all__ = ["to_uint8", "as_float01", "save_paired", "load_paired", "save_labelled", "load_labelled", "save_tensors",
           "load_tensors", "load_tensors_mapped", "save_records", "load_records", "save_array", "load_array",
           "save_arrays", "load_arrays", "StoreError"]


class StoreError(RuntimeError):
    """A stored stage file cannot be read back (the stage is redone)."""


def to_uint8(t: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 (rounded), as every stage stores them; uint8 images as they are."""
    if t.dtype == torch.uint8:
        return t
    return t.clamp(0, 1).mul(255).round().to(torch.uint8)


def _float(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else as_float01(t)


def save_tensors(stage: Stage, rel: str, tensors: dict[str, torch.Tensor]) -> None:
    stage.write_file(rel, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))


def load_tensors(stage: Stage, rel: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(stage.path(rel)))
    except (OSError, SafetensorError) as exc:
        raise StoreError(f"{stage.path(rel)}: {exc}") from None


def load_tensors_mapped(stage: Stage, rel: str) -> dict[str, torch.Tensor]:
    """:func:`load_tensors` with ``uint8`` tensors memory-mapped from the file (copy-on-write), not read:
    a method's test outputs cost no memory until indexed (the image grid reads a few of them).
    Tensors of other types are read as by :func:`load_tensors`."""
    path = stage.path(rel)
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
            size = fh.seek(0, 2)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: {exc}") from None
    header.pop("__metadata__", None)
    if any(v.get("dtype") != "U8" for v in header.values()):
        return load_tensors(stage, rel)
    out = {}
    for name, v in header.items():
        begin, end = v["data_offsets"]
        shape = tuple(int(d) for d in v["shape"])
        if end - begin != int(np.prod(shape, dtype=np.int64)) or end == begin or 8 + n + end > size:
            return load_tensors(stage, rel)  # empty, inconsistent or truncated: let safetensors read (or refuse) it
        arr = np.memmap(path, dtype=np.uint8, mode="c", offset=8 + n + begin, shape=shape)
        out[name] = torch.from_numpy(arr)
    return out


def save_paired(stage: Stage, split: str, data: PairedSet) -> None:
    """``<split>.safetensors`` (x, y, optional masks and y2 as uint8) + ``<split>.json`` (labels, ids)."""
    tensors = {"x": to_uint8(data.x), "y": to_uint8(data.y)}
    if data.masks is not None:
        tensors["masks"] = data.masks.to(torch.uint8)
    if data.y2 is not None:
        tensors["y2"] = to_uint8(data.y2)
    save_tensors(stage, f"{split}.safetensors", tensors)
    stage.write_json(f"{split}.json", {"labels": list(data.labels), "ids": list(data.ids)})


def load_paired(stage: Stage, split: str, *, keep_uint8: bool = False) -> PairedSet:
    """A split of :func:`save_paired` as float32 ``k / 255`` images, or with ``keep_uint8`` as the stored
    uint8 images, memory-mapped (4x smaller, pages shared between processes; the metrics, the
    classifier and :func:`as_float01` read them as the same values)."""
    meta = stage.load_json(f"{split}.json")
    if keep_uint8:
        t = load_tensors_mapped(stage, f"{split}.safetensors")
        return PairedSet(t["x"], t["y"], meta["labels"], meta["ids"], t.get("masks"), t.get("y2"))
    t = load_tensors(stage, f"{split}.safetensors")
    return PairedSet(_float(t["x"]), _float(t["y"]), meta["labels"], meta["ids"], t.get("masks"), _float(t.get("y2")))


def save_labelled(stage: Stage, name: str, data: LabelledSet) -> None:
    save_tensors(stage, f"{name}.safetensors", {"images": to_uint8(data.images)})
    stage.write_json(f"{name}.json", {"labels": list(data.labels), "ids": list(data.ids)})


def load_labelled(stage: Stage, name: str) -> LabelledSet:
    meta = stage.load_json(f"{name}.json")
    return LabelledSet(_float(load_tensors(stage, f"{name}.safetensors")["images"]), meta["labels"], meta["ids"])


def save_records(stage: Stage, rel: str, records: list[Record]) -> None:
    stage.write_json(rel, [r.to_dict() for r in records])


def load_records(stage: Stage, rel: str) -> list[Record]:
    return [Record.from_dict(d) for d in json.loads(stage.path(rel).read_text(encoding="utf-8"))]


def save_array(stage: Stage, rel: str, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array))

    stage.write_file(rel, write)


def load_array(stage: Stage, rel: str) -> np.ndarray:
    return np.load(stage.path(rel), allow_pickle=False)


def save_arrays(stage: Stage, rel: str, arrays: dict[str, np.ndarray]) -> None:
    """Named arrays in one uncompressed ``.npz`` (names may contain ``/``)."""
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})

    stage.write_file(rel, write)


def load_arrays(stage: Stage, rel: str) -> dict[str, np.ndarray]:
    with np.load(stage.path(rel), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
