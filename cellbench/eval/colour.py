"""Per-cell-type colour statistics in CIELAB: means, spreads and distribution distances by region.

For each cell type (and ``"all"``) and each region, pixels are pooled over the test images of
that type, and for G(x) and for the real y we report the mean and the standard deviation of L*,
a*, b* (CIELAB, D65, :func:`cellbench.eval.image.rgb_to_lab` = ``skimage.color.rgb2lab``), the
CIEDE2000 between the two mean colours, and the Wasserstein-1 distance between the two
distributions of each channel (= ``scipy.stats.wasserstein_distance`` on a seeded subsample of
pixels).

Regions (label values of :mod:`cellbench.data.masks`):

==============  ===========================  ==============================================
region          labels                       note
==============  ===========================  ==============================================
``nucleus``     4
``cytoplasm``   3, 5                         granules (5) are counted as cytoplasm
``red_cell``    1
``background``  0
``wbc``         3, 4, 5                      the whole white blood cell
==============  ===========================  ==============================================

Platelets (2) belong to no region. G(x) is registered with y, so the masks of y (the dataset's
masks, or the project's segmentation of y) define the regions of both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.masks import BACKGROUND, CYTOPLASM, GRANULES, NUCLEUS, RED_CELL, WBC_LABELS
from .image import as_masks, as_pair, ciede2000, metric_lab, single_threaded_torch

__all__ = ["REGIONS", "CHANNELS", "ColourStat", "ColourAccumulator", "colour_stats"]

#: Region name -> mask labels.
REGIONS: dict[str, tuple[int, ...]] = {
    "nucleus": (NUCLEUS,),
    "cytoplasm": (CYTOPLASM, GRANULES),
    "red_cell": (RED_CELL,),
    "background": (BACKGROUND,),
    "wbc": tuple(WBC_LABELS),
}
CHANNELS: tuple[str, ...] = ("L", "a", "b")
_NLAB = 6  # label values 0..5


@dataclass(frozen=True)
class ColourStat:
    """Colour statistics of one (cell type, region): arrays are ``(3,)`` over L*, a*, b*."""

    cell_type: str
    region: str
    n_images: int
    n_pixels: int
    mean: np.ndarray  # of G(x)
    std: np.ndarray
    target_mean: np.ndarray  # of y
    target_std: np.ndarray
    delta_e: float  # CIEDE2000(mean Lab of y, mean Lab of G(x))
    w1: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    n_samples: int = 0


def colour_stats(
    pred,
    target,
    masks,
    labels: Sequence[str],
    *,
    seed: int = 0,
    samples_per_image: int = 4096,
    regions: dict[str, tuple[int, ...]] | None = None,
    chunk: int = 4,
    max_samples: int = 100_000,
) -> list[ColourStat]:
    """Colour statistics per cell type (and ``"all"``) and region.

    Parameters
    ----------
    pred, target:
        G(x) and y, ``(N, 3, H, W)`` floats in [0, 1].
    masks:
        ``(N, H, W)`` integer label maps (0 background ... 5 granules) of y.
    labels:
        The ``N`` cell-type names of the pairs.
    seed:
        Seeds the pixel subsample of the Wasserstein distances: ``samples_per_image`` pixel
        positions per image drawn uniformly without replacement (the same positions for G(x) and
        y, and for every method evaluated with the same seed), so each region's sample is
        proportional to its area.
    samples_per_image:
        Pixels sampled per image for W1 (means and standard deviations use every pixel).
    max_samples:
        At most this many sampled pixels per (cell type, region) enter W1 (a seeded random subset
        of them beyond that), which bounds the sorting cost on large test sets.

    Returns
    -------
    list[ColourStat]
        One entry per (cell type, region) with at least one pixel; ``"all"`` first, then the
        cell types in sorted order; regions in the order of :data:`REGIONS`. Means in CIELAB
        units (L* in [0, 100]); standard deviations are population (ddof=0) over pooled pixels.
    """
    p, t = as_pair(pred, target)
    n, _, h, w = p.shape
    acc = ColourAccumulator(masks, labels, (n, h, w), seed=seed, samples_per_image=samples_per_image,
                            max_samples=max_samples)
    with single_threaded_torch():  # memory-bound passes: see cellbench.eval.image.single_threaded_torch
        for s in range(0, n, chunk):
            sl = slice(s, min(s + chunk, n))
            acc.update(sl, metric_lab(p[sl]), metric_lab(t[sl]))
    return acc.result(regions)


def _w1_equal_size(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Wasserstein-1 per column between two samples of equal size ``(k, 3)``.

    For equal sizes the optimal transport matches order statistics, so W1 is the mean absolute
    difference of the sorted samples -- the same value as ``scipy.stats.wasserstein_distance``
    (tested), without its concatenate/argsort/searchsorted.
    """
    return np.abs(np.sort(u, axis=0) - np.sort(v, axis=0)).mean(axis=0)


class ColourAccumulator:
    """Streaming form of :func:`colour_stats`: feed CIELAB chunks in order, then :meth:`result`.

    ``update(sl, lab_pred, lab_target)`` takes the CIELAB images ``(n, 3, H, W)`` of the images
    ``sl`` (consecutive slices from 0 to N, in order, so the seeded pixel sample does not depend on
    the chunk size); :func:`cellbench.eval.image.image_metrics` can feed it through ``lab_hook``.
    """

    def __init__(self, masks, labels: Sequence[str], shape: tuple[int, int, int], *, seed: int = 0,
                 samples_per_image: int = 4096, max_samples: int = 100_000) -> None:
        n, h, w = shape
        m = as_masks(masks, n, (h, w))
        if m is None:
            raise ValueError("colour_stats needs region masks (N, H, W); see cellbench.segmentation")
        self.labels = list(labels)
        if len(self.labels) != n:
            raise ValueError(f"{n} images but {len(self.labels)} labels")
        self.masks, self.n, self.hw = m, n, h * w
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.max_samples = max_samples
        k = self.k = min(samples_per_image, self.hw)
        # per image and label value: pixel count, sums and sums of squares of L, a, b (float64)
        self.cnt = np.zeros((n, _NLAB))
        self.sums = np.zeros((2, n, _NLAB, 3))
        self.sqs = np.zeros((2, n, _NLAB, 3))
        self.samp_lab = np.zeros((2, n, k, 3))
        self.samp_lbl = np.zeros((n, k), dtype=np.int64)
        self.next = 0

    def update(self, sl: slice, lab_pred: torch.Tensor, lab_target: torch.Tensor) -> None:
        s, e = sl.start or 0, sl.stop
        if s != self.next:
            raise ValueError(f"chunks must come in order: expected images from {self.next}, got {s}")
        self.next = e
        hw, k = self.hw, self.k
        lbl = self.masks[s:e].reshape(e - s, hw).to(torch.long).cpu()
        idx = torch.from_numpy(np.stack([self.rng.choice(hw, size=k, replace=False) for _ in range(e - s)]))
        self.samp_lbl[s:e] = torch.gather(lbl, 1, idx).numpy()
        # per-label sums by scatter-add over the pixels (label values >= _NLAB go to a spare slot)
        slot = lbl.clamp(0, _NLAB)  # (n, hw)
        self.cnt[s:e] = torch.zeros(e - s, _NLAB + 1, dtype=torch.float64).scatter_add_(
            1, slot, torch.ones(slot.shape, dtype=torch.float64))[:, :_NLAB].numpy()
        index = slot.unsqueeze(1).expand(-1, 3, -1)  # (n, 3, hw)
        for j, lab_img in enumerate((lab_pred, lab_target)):
            lab = lab_img.detach().to(device="cpu", dtype=torch.float64).reshape(e - s, 3, hw)
            for acc, v in ((self.sums, lab), (self.sqs, lab * lab)):
                acc[j, s:e] = torch.zeros(e - s, 3, _NLAB + 1, dtype=torch.float64).scatter_add_(
                    2, index, v)[:, :, :_NLAB].permute(0, 2, 1).numpy()
            picked = torch.gather(lab, 2, idx.unsqueeze(1).expand(-1, 3, -1))  # (n, 3, k)
            self.samp_lab[j, s:e] = picked.permute(0, 2, 1).numpy()

    def result(self, regions: dict[str, tuple[int, ...]] | None = None) -> list[ColourStat]:
        if self.next != self.n:
            raise ValueError(f"only {self.next} of {self.n} images were fed to the colour statistics")
        regions = dict(REGIONS if regions is None else regions)
        # a second, independent stream for capping W1 samples (keeps the pixel sample chunk-independent)
        cap_rng = np.random.default_rng([self.seed, 1])
        lab_arr = np.asarray(self.labels)
        cnt, sums, sqs, samp_lab, samp_lbl = self.cnt, self.sums, self.sqs, self.samp_lab, self.samp_lbl
        out: list[ColourStat] = []
        for cell_type in ["all", *sorted(set(self.labels))]:
            sel = np.ones(self.n, dtype=bool) if cell_type == "all" else lab_arr == cell_type
            for region, vals in regions.items():
                vals = [v for v in vals if 0 <= v < _NLAB]
                c = cnt[sel][:, vals].sum()
                if c <= 0:
                    continue
                mean = sums[:, sel][:, :, vals].sum(axis=(1, 2)) / c  # (2, 3)
                var = sqs[:, sel][:, :, vals].sum(axis=(1, 2)) / c - mean**2
                std = np.sqrt(np.maximum(var, 0.0))
                de = float(ciede2000(mean[1], mean[0], dim=-1))
                in_reg = np.isin(samp_lbl[sel], vals)
                sp, st = samp_lab[0, sel][in_reg], samp_lab[1, sel][in_reg]
                if len(sp) > self.max_samples:
                    keep = cap_rng.choice(len(sp), self.max_samples, replace=False)
                    sp, st = sp[keep], st[keep]
                w1 = _w1_equal_size(sp, st) if len(sp) else np.full(3, np.nan)
                out.append(ColourStat(
                    cell_type=cell_type, region=region, n_images=int(sel.sum()), n_pixels=int(c),
                    mean=mean[0], std=std[0], target_mean=mean[1], target_std=std[1], delta_e=de, w1=w1,
                    n_samples=int(len(sp)),
                ))
        return out
