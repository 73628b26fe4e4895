"""Optional scale normalization between systems with different magnification.

Two systems rarely show cells at the same size in pixels (the Raspberry Pi camera images of
``chula_rpi`` versus the CellaVision DM96 images of PBC). A colour normalizer should not be
blamed for that, so the cross-system track can rescale the source images first:

1. :func:`estimate_scale` measures, per image, the white cell's equivalent diameter and the red
   cells' diameter, and takes the median over the data set (robust to the images where the
   simple segmentation fails).
2. :func:`scale_factor` is the ratio ``target / source`` of one of the two diameters.
3. :func:`rescale_images` resizes the source images by that factor (bilinear, antialiased when
   shrinking) and centre crops or reflect-pads them back to the working size.

The segmentation is a documented threshold heuristic, not a learned model:

* **Optical density.** Each channel is divided by a smooth background field (a maximum filter
  wider than a cell, then a Gaussian: the empty slide), which removes the colour cast and
  uneven illumination, and converted to optical density ``OD = -log10(I / I_bg)`` (Beer-Lambert).
* **Stained foreground** (every cell): the lower of two multi-Otsu thresholds (three classes:
  slide, cells, dark nuclei) on the summed OD; specks smaller than ``0.1 %`` of the image removed.
* **White cell.** Romanowsky stains colour nuclei (and the dark cytoplasm of some WBCs) blue to
  violet: they absorb red light, red cells much less (haemoglobin absorbs green). Pixels in the
  darkest of three multi-Otsu classes of the summed OD whose ``OD_red / OD_sum`` is above Otsu's
  threshold (inside the foreground) form the dark stained core; the convex hull of its blobs
  within ``0.25 min(H, W)`` of the centre (crops are centred on one WBC) is the white cell, and
  ``sqrt(4 A / pi)`` its equivalent diameter. This measures the dark core (nucleus plus dark
  cytoplasm), not the pale cytoplasm of neutrophils; it is a ruler, comparable between systems
  only for the same mix of cell types (the cross loader uses the shared classes).
* **Red cells.** Foreground (after a closing and hole filling, so pale-centred red cells become
  discs) outside the dilated white cell; each connected component's largest Euclidean
  distance-transform value is its radius (for clumps, the largest of the touching cells'), so
  its diameter is ``2 max(EDT)``; the per-image value is the upper quartile over components
  (cells cut by the border and fragments are smaller than whole cells).

Both are estimates in pixels. The RBC size is the better ruler in principle (red cells are
~7.5 um everywhere and every image has many), the WBC size depends on the cell type mix; the
two are reported side by side in ``docs/realdata.md``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu, threshold_otsu
from skimage.morphology import convex_hull_image

from ..tensors import check_batch

log = logging.getLogger(__name__)

__all__ = ["ScaleEstimate", "estimate_scale", "scale_factor", "rescale_images", "measure_image"]


@dataclass(frozen=True)
class ScaleEstimate:
    """Median cell sizes of a data set, in pixels (``nan`` where nothing could be measured).

    ``n_used`` is the number of images that gave at least one of the two measurements.
    """

    wbc_diameter_px: float
    rbc_diameter_px: float
    n_used: int

    def diameter(self, by: str) -> float:
        if by not in ("wbc", "rbc"):
            raise ValueError(f"by must be 'wbc' or 'rbc', got {by!r}")
        return self.wbc_diameter_px if by == "wbc" else self.rbc_diameter_px


def _otsu(values: np.ndarray) -> float | None:
    if values.size < 16 or float(values.max() - values.min()) < 1e-6:
        return None
    return float(threshold_otsu(values))


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def measure_image(image: np.ndarray) -> tuple[float, float]:
    """WBC equivalent diameter and median RBC diameter (pixels) of one image.

    Parameters
    ----------
    image:
        ``float`` ``(H, W, 3)`` RGB in [0, 1].

    Returns
    -------
    (wbc_diameter_px, rbc_diameter_px)
        Either is ``nan`` when not found.
    """
    h, w = image.shape[:2]
    rgb = np.clip(image.astype(np.float64), 0, 1)
    bg = _background(rgb)
    od = -np.log10(np.clip(rgb / np.maximum(bg, 1e-3), 1e-3, 1.0))
    total = od.sum(axis=2)
    if float(total.max() - total.min()) < 1e-6:
        return math.nan, math.nan
    try:
        t_fg, t_dark = threshold_multiotsu(total, classes=3)
    except ValueError:
        return math.nan, math.nan
    min_area = max(9, int(0.001 * h * w))
    # Closing first: red cells with a pale centre show as rings that a one-pixel gap would open.
    fg = _remove_small(ndi.binary_fill_holes(ndi.binary_closing(total > t_fg, _disk(2))), min_area)
    if not fg.any():
        return math.nan, math.nan

    # White cell: dark (top OD class) and blue-violet (red-absorbing) blobs near the centre.
    ratio = od[..., 0] / np.maximum(total, 1e-6)
    wbc_d = math.nan
    wbc = np.zeros_like(fg)
    tr = _otsu(ratio[fg])
    if tr is not None:
        core = _remove_small(ndi.binary_opening(fg & (total > t_dark) & (ratio > tr), _disk(1)), min_area)
        lab, n = ndi.label(core)
        if n:
            idx = np.arange(1, n + 1)
            cy, cx = np.array(ndi.center_of_mass(core, lab, idx)).T
            near = idx[np.hypot(cy - (h - 1) / 2, cx - (w - 1) / 2) < 0.25 * min(h, w)]
            if near.size:
                wbc = convex_hull_image(np.isin(lab, near))
                wbc_d = 2.0 * math.sqrt(wbc.sum() / math.pi)

    # Red cells: the rest of the foreground; radius = largest distance to the background.
    rbc = fg & ~ndi.binary_dilation(wbc, structure=_disk(3)) if wbc.any() else fg
    rbc = _remove_small(rbc, min_area)
    lab, n = ndi.label(rbc)
    rbc_d = math.nan
    if n:
        edt = ndi.distance_transform_edt(np.pad(rbc, 1))[1:-1, 1:-1]
        radii = ndi.maximum(edt, lab, np.arange(1, n + 1))
        # Upper quartile: cut-off cells at the border and fragments are smaller than whole cells.
        rbc_d = float(2.0 * np.percentile(radii, 75))
    return wbc_d, rbc_d


def _background(rgb: np.ndarray) -> np.ndarray:
    """Slowly varying empty-slide brightness per pixel and channel, shape ``(H, W, 3)``.

    A maximum filter wider than a cell picks the empty slide around the cells (cells are darker),
    a wide Gaussian smooths it; this removes vignetting and uneven illumination (the Raspberry Pi
    images) as well as the colour cast.
    """
    h, w = rgb.shape[:2]
    k = max(3, min(h, w) // 8)
    small = rgb[::4, ::4]
    out = np.empty_like(rgb)
    for c in range(3):
        m = ndi.maximum_filter(small[..., c], size=max(3, k // 4), mode="nearest")
        m = ndi.gaussian_filter(m, sigma=max(1.0, k / 8), mode="nearest")
        out[..., c] = ndi.zoom(m, (h / m.shape[0], w / m.shape[1]), order=1, mode="nearest")[:h, :w]
    return out


def _remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[lab]


def estimate_scale(images: torch.Tensor, *, max_images: int = 200) -> ScaleEstimate:
    """Robust (median over images) cell sizes of a data set of one system.

    Parameters
    ----------
    images:
        ``float`` ``(N, 3, H, W)`` in [0, 1], each centred on one white cell (the PBC crops).
    max_images:
        Measure at most this many, evenly spaced over the set (deterministic).

    Returns
    -------
    ScaleEstimate
    """
    check_batch(images)
    n = len(images)
    if n == 0:
        raise ValueError("estimate_scale needs at least one image")
    idx = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int))
    arr = images[torch.as_tensor(idx)].detach().float().permute(0, 2, 3, 1).cpu().numpy()
    wbcs, rbcs, used = [], [], 0
    for im in arr:
        wd, rd = measure_image(im)
        if math.isfinite(wd):
            wbcs.append(wd)
        if math.isfinite(rd):
            rbcs.append(rd)
        used += math.isfinite(wd) or math.isfinite(rd)
    est = ScaleEstimate(float(np.median(wbcs)) if wbcs else math.nan,
                        float(np.median(rbcs)) if rbcs else math.nan, used)
    log.info("scale estimate over %d image(s): WBC %.1f px, RBC %.1f px", len(idx),
             est.wbc_diameter_px, est.rbc_diameter_px)
    return est


def scale_factor(source: ScaleEstimate, target: ScaleEstimate, *, by: str = "wbc") -> float:
    """Zoom factor for the source images so that their cells match the target's size.

    ``factor = target.diameter / source.diameter``; ``> 1`` enlarges the source images.

    Raises
    ------
    ValueError
        When either diameter is missing (``nan``) or not positive.
    """
    s, t = source.diameter(by), target.diameter(by)
    if not (math.isfinite(s) and math.isfinite(t) and s > 0 and t > 0):
        other = "rbc" if by == "wbc" else "wbc"
        raise ValueError(f"cannot compute a {by.upper()} scale factor: source {s} px, target {t} px "
                         f"(the {by.upper()} could not be measured; try by='{other}')")
    return t / s


def rescale_images(images: torch.Tensor, factor: float, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize by ``factor`` then centre crop / reflect-pad to ``size``.

    Parameters
    ----------
    images:
        ``float`` ``(N, 3, H, W)`` in [0, 1].
    factor:
        Zoom (``> 1`` enlarges), from :func:`scale_factor`.
    size:
        Output ``(height, width)`` or one int for a square.

    Returns
    -------
    torch.Tensor
        ``float32`` ``(N, 3, size_h, size_w)`` in [0, 1]; the centre of the input stays the centre.
    """
    check_batch(images)
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a positive number, got {factor}")
    th, tw = (size, size) if isinstance(size, int) else size
    x = images.float()
    h, w = x.shape[-2:]
    if abs(factor - 1.0) > 1e-6:
        nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=factor < 1)
        x = x.clamp_(0, 1)
    h, w = x.shape[-2:]
    if h < th or w < tw:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
        x = F.pad(x, pad, mode=mode)
        h, w = x.shape[-2:]
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top : top + th, left : left + tw].contiguous()
