"""The image-tensor convention and the few helpers that cross between numpy and torch.

Convention: images that flow between the data layer, normalizers, trainers and metrics are
``torch.float32`` tensors of shape ``(N, 3, H, W)`` with values in ``[0, 1]``
(:func:`check_batch` enforces it). Files on disk are ``uint8`` ``(H, W, 3)`` arrays
(:mod:`cellbench.io`); this module converts between the two:

* :func:`to_tensor` -- decoded ``uint8`` ``(H, W, 3)`` / ``(N, H, W, 3)`` -> the float batch
  (the data loaders, ``cellbench transform``, metrics given numpy stacks);
* :func:`to_uint8` -- the float batch -> ``uint8`` ``(N, H, W, 3)`` numpy, rounded and clipped,
  for writing images (``cellbench transform``, the trainers' sample grids);
* :func:`as_float01` -- a stored ``uint8`` ``(N, 3, H, W)`` batch -> float32 ``k / 255`` (the values its
  float copy holds), so 8-bit data can be kept as they are and converted a batch at a time;
* :func:`center_crop_or_pad`, :func:`rotate90` -- geometry on ``(H, W, ...)`` numpy arrays, applied
  alike to an image, its pair and its mask while loading (paper sec. 5.1 augmentation).
"""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8`` ``(H, W, 3)`` or ``(N, H, W, 3)`` -> ``float32`` ``(N, 3, H, W)`` in [0, 1]."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) or (N, H, W, 3), got {a.shape}")
    if a.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().div_(255.0)
    else:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(0, 3, 1, 2)
    return t.contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``float`` ``(N, 3, H, W)`` in [0, 1] -> ``uint8`` ``(N, H, W, 3)`` (rounded, clipped)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W), got {tuple(images.shape)}")
    t = images.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return t.permute(0, 2, 3, 1).cpu().numpy()


def as_float01(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images -> float32 ``k / 255``; floating-point images as they are."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def check_batch(images: torch.Tensor, what: str = "images", *, allow_uint8: bool = False) -> None:
    """Raise ``ValueError`` unless ``images`` is a float ``(N, 3, H, W)`` tensor (or, with
    ``allow_uint8``, a ``uint8`` one: 8-bit images read through :func:`as_float01`)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{what} must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if allow_uint8 and images.dtype == torch.uint8:
        return
    if not images.is_floating_point():
        raise ValueError(f"{what} must be floating point in [0, 1], got {images.dtype}")


def center_crop_or_pad(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bring an ``(H, W, ...)`` array to ``size`` by a centre crop, or reflect-padding when smaller.

    The crop/pad offset is ``(H - h) // 2`` (crop keeps the centre, rounding towards the top-left);
    padding reflects the border (the background of a cell image continues naturally). Works for
    images ``(H, W, 3)`` and masks ``(H, W)`` alike, so a pair and its mask stay aligned.
    """
    th, tw = (size, size) if isinstance(size, int) else size
    a = image
    h, w = a.shape[:2]
    if h < th or w < tw:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (a.ndim - 2)
        mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
        a = np.pad(a, pad, mode=mode)
        h, w = a.shape[:2]
    top, left = (h - th) // 2, (w - tw) // 2
    return np.ascontiguousarray(a[top : top + th, left : left + tw])


def rotate90(image: np.ndarray, k: int) -> np.ndarray:
    """Rotate an ``(H, W, ...)`` array by ``k`` x 90 degrees counter-clockwise (paper sec. 5.1)."""
    return np.ascontiguousarray(np.rot90(image, k=k, axes=(0, 1)))
