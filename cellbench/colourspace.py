"""Colour-space maths on image tensors: sRGB -> CIELAB and the CIEDE2000 colour difference.

A foundation module (torch only): the metrics (:mod:`cellbench.eval.image`, which re-exports both
functions), the colour statistics, and the trainers' logged batch-norm gap all use these two
functions. Both are vectorized ports of scikit-image's ``skimage.color.rgb2lab`` and
``skimage.color.deltaE_ciede2000``; ``tests/test_eval_image.py`` checks them against it.

References
----------
Sharma, Wu and Dalal, "The CIEDE2000 color-difference formula: implementation notes,
supplementary test data, and mathematical observations", Color Res. Appl. 30(1), 2005.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["rgb_to_lab", "ciede2000"]

# sRGB (D65) -> XYZ matrix and D65 2-degree white of skimage.color.colorconv (same values).
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)

_DTYPE = torch.float64


def _as_float_images(images: torch.Tensor | np.ndarray, dtype: torch.dtype = _DTYPE) -> torch.Tensor:
    """``(N, 3, H, W)`` / ``(3, H, W)`` floats in [0, 1] or uint8 (tensor), or ``(N, H, W, 3)`` numpy -> float64."""
    t = images
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t[None] if t.ndim == 3 else t)).permute(0, 3, 1, 2)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"images: expected a torch.Tensor (N, 3, H, W) or numpy array, got {type(t).__name__}")
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(images.shape)}")
    if t.dtype == torch.uint8:
        return t.to(dtype) / 255.0
    if not t.is_floating_point():
        raise ValueError(f"images: expected floats in [0, 1] or uint8, got {t.dtype}")
    return t.to(dtype)


def rgb_to_lab(images: torch.Tensor, *, dtype: torch.dtype = _DTYPE) -> torch.Tensor:
    """sRGB ``(N, 3, H, W)`` in [0, 1] -> CIELAB ``(N, 3, H, W)`` (D65, 2 degree observer), computed in
    ``dtype`` (float64 by default; float32 for a training loss).

    Same formulas and constants as ``skimage.color.rgb2lab``: sRGB decoding (threshold 0.04045,
    exponent 2.4), the sRGB->XYZ matrix, white (0.95047, 1, 1.08883), the CIE cube root with the
    linear segment below 0.008856 (slope 7.787, offset 16/116). L in [0, 100]. Each power's argument
    is clamped to its branch's domain (the other branch's value is kept), so the gradient is finite
    for inputs in [0, 1].
    """
    x = _as_float_images(images, dtype)
    lin = torch.where(x > 0.04045, ((x.clamp_min(0.04045) + 0.055) / 1.055).pow(2.4), x / 12.92)
    mat = torch.tensor(_XYZ_FROM_RGB, dtype=dtype, device=x.device)
    white = torch.tensor(_D65_WHITE, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,njhw->nihw", mat, lin) / white
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856).pow(1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def ciede2000(lab1: torch.Tensor | np.ndarray, lab2: torch.Tensor | np.ndarray, *, dim: int = 1,
              dtype: torch.dtype = _DTYPE) -> torch.Tensor:
    """CIEDE2000 colour difference (Sharma et al. 2005, eqs. 1-22; kL = kC = kH = 1).

    A vectorized port of ``skimage.color.deltaE_ciede2000`` (including its hue conventions:
    hue in [0, 2 pi), zero hue difference and summed mean hue where a chroma is zero), using
    in-place operations; in float64 (the default ``dtype``) it agrees with skimage to ~1e-12, in
    float32 (the per-image metrics, :data:`cellbench.eval.image.METRIC_DTYPE`) to ~1e-4 per pixel.

    Parameters
    ----------
    lab1, lab2:
        CIELAB arrays with the L, a, b channels along ``dim`` (default 1, i.e. ``(N, 3, H, W)``);
        numpy inputs are accepted (e.g. ``(..., 3)`` with ``dim=-1``).
    dtype:
        Precision of the computation and of the result.

    Returns
    -------
    torch.Tensor
        ``dtype``, the input shape without ``dim``.
    """
    l1 = torch.as_tensor(lab1).to(dtype)
    l2 = torch.as_tensor(lab2).to(dtype)
    L1, a1, b1 = l1.unbind(dim)[:3]
    L2, a2, b2 = l2.unbind(dim)[:3]
    two_pi = 2 * math.pi
    p25_7 = 25.0**7
    cbar = (torch.hypot(a1, b1) + torch.hypot(a2, b2)).mul_(0.5)
    c7 = cbar.pow_(7)
    scale = (c7 / (c7 + p25_7)).sqrt_().neg_().add_(1).mul_(0.5).add_(1)
    a1s, a2s = a1 * scale, a2 * scale
    C1, C2 = torch.hypot(a1s, b1), torch.hypot(a2s, b2)
    h1 = torch.atan2(b1, a1s)
    h1 = torch.where(h1 < 0, h1 + two_pi, h1)
    h2 = torch.atan2(b2, a2s)
    h2 = torch.where(h2 < 0, h2 + two_pi, h2)
    tmp = (L1 + L2).mul_(0.5).sub_(50).square_()
    SL = (tmp * 0.015).div_((tmp + 20).sqrt_()).add_(1)
    L_term = (L2 - L1).div_(SL)
    cbar = (C1 + C2).mul_(0.5)
    C_term = (C2 - C1).div_(cbar * 0.045 + 1)
    h_diff = h2 - h1
    h_sum = h1 + h2
    CC = C1 * C2
    zero = CC == 0.0
    gt = h_diff > math.pi
    lt = h_diff < -math.pi
    dH = torch.where(gt, h_diff - two_pi, torch.where(lt, h_diff + two_pi, h_diff))
    dH = dH.masked_fill_(zero, 0.0)
    dH_term = CC.sqrt().mul_(2).mul_(dH.mul_(0.5).sin_())
    wrap = (gt | lt) & ~zero
    hbar = torch.where(wrap, torch.where(h_sum < two_pi, h_sum + two_pi, h_sum - two_pi), h_sum)
    hbar = torch.where(zero, hbar, hbar * 0.5)
    # T (eq. 15) through multiple-angle identities: one cos and one sin of hbar instead of four cos
    c, s = torch.cos(hbar), torch.sin(hbar)
    c2, s2 = 2 * c * c - 1, 2 * s * c
    c3, s3 = c * (4 * c * c - 3), s * (3 - 4 * s * s)
    c4, s4 = 2 * c2 * c2 - 1, 2 * s2 * c2
    r30, r6, r63 = math.radians(30), math.radians(6), math.radians(63)
    T = (1 - 0.17 * (c * math.cos(r30) + s * math.sin(r30)) + 0.24 * c2
         + 0.32 * (c3 * math.cos(r6) - s3 * math.sin(r6)) - 0.20 * (c4 * math.cos(r63) + s4 * math.sin(r63)))
    H_term = dH_term.div_(T.mul_(cbar).mul_(0.015).add_(1))
    c7 = cbar.pow(7)
    Rc = (c7 / (c7 + p25_7)).sqrt_().mul_(2)
    dtheta = (torch.rad2deg(hbar).sub_(275).div_(25).square_().neg_().exp_()).mul_(math.radians(30))
    R_term = dtheta.mul_(2).sin_().neg_().mul_(Rc).mul_(C_term).mul_(H_term)
    dE2 = L_term.square_().add_(C_term.square_()).add_(H_term.square_()).add_(R_term)
    return dE2.clamp_(min=0).sqrt_()
