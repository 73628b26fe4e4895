"""Unsupervised colour segmentation of blood-cell images, learned from the images themselves.

Real data carries no region masks, so HM normalization (and the colour statistics of the
benchmark, and the simulator's calibration) segment images with a model fitted on unlabelled
training images. The model works in optical density (Beer-Lambert) relative to each image's own
background, which makes it largely independent of the illuminant and the camera:

1. **Background colour** ``b`` (per image): the mean RGB of the pixels whose brightness
   ``R+G+B`` is at or above the ``bg_quantile`` (0.8) quantile of that image. Blood smears are
   mostly background, so the brightest fifth is background even in crowded fields.
2. **Optical density** ``od_c = -ln(clip(I_c / b_c, 1e-3, 1))`` and two features:
   total density ``t = od_R + od_G + od_B`` (how much stain) and the blue/green density ratio
   ``r = od_B / od_G`` (hue: eosin-stained red cells absorb mostly green and some blue, so
   ``r`` is high (~0.5-0.7 on DM96); Romanowsky-stained WBC nucleus and cytoplasm pass blue,
   so ``r`` is low (~0.2-0.35)).
3. **Three thresholds learned with Otsu's criterion** on sampled training pixels (no labels):
   ``t_bg`` on ``ln t`` of all pixels (background vs stained), ``r_wbc`` on ``r`` of the clearly
   stained pixels (``t > 3 exp(t_bg)``; red cell vs WBC hue), ``t_nuc`` on ``sqrt t`` of WBC-hued
   pixels (pale cytoplasm vs dense nucleus). Each threshold gets a softness equal to a fraction of
   the gap between the two class means, so memberships are smooth logistic functions, not hard cuts.
4. **Regions** (label values of :mod:`cellbench.data.masks`), as soft memberships that sum to 1::

       p_fg  = s((ln t - t_bg) / w_bg)          stained
       p_wbc = s((r_wbc - r) / w_r)             WBC hue
       p_nuc = s((t - t_nuc) / w_nuc)           dense
       background (0) = 1 - p_fg
       nucleus    (4) = p_fg * max(p_wbc, p_dense) * p_nuc   (very dense pixels are nucleus whatever the hue)
       cytoplasm  (3) = p_fg * p_wbc * (1 - p_nuc) * near_nucleus
       red cell   (1) = the rest of p_fg

   ``near_nucleus`` is the spatial rule: pale WBC-hued pixels count as cytoplasm only within
   ``wbc_radius`` (fraction of the image side) of a nucleus pixel (a max-pool dilation of the
   hard nucleus map, blurred), since cytoplasm surrounds its nucleus; elsewhere (red-cell rims,
   stain debris) they fall to red cell. Eosinophil/neutrophil granules fold into cytoplasm or
   nucleus; platelets (small dense purple dots) fold into nucleus.

Everything runs on a downsampled copy (short side ``work_size`` pixels, area averaging); the soft
memberships are upsampled bilinearly, so :meth:`ColourSegmenter.predict_proba` is cheap
(a few elementwise ops on ~4,000 pixels per image) and has no seams.
"""

from __future__ import annotations

import math
from typing import Self

import torch
import torch.nn.functional as F

from .data.masks import BACKGROUND, CYTOPLASM, NUCLEUS, RED_CELL
from .errors import CheckpointError, ConfigError
from .tensors import as_float01, check_batch

#: Region label values, in the channel order of :meth:`ColourSegmenter.predict_proba`.
REGIONS: tuple[int, ...] = (BACKGROUND, RED_CELL, CYTOPLASM, NUCLEUS)

_EPS = 1e-3
#: Fallback thresholds (DM96-like images) used when a training set cannot separate two classes.
_DEFAULTS = {"t_bg": math.log(0.15), "r_wbc": 0.45, "t_nuc": 1.3}


def downsample(images: torch.Tensor, work_size: int) -> torch.Tensor:
    """Area-average ``(N, 3, H, W)`` so that the short side is about ``work_size`` pixels."""
    f = max(1, min(images.shape[-2:]) // work_size)
    return F.avg_pool2d(images, f) if f > 1 else images


def background_colour(images: torch.Tensor, *, quantile: float = 0.8) -> torch.Tensor:
    """Per-image background RGB ``(N, 3)``: mean colour of the brightest ``1 - quantile`` pixels.

    Parameters
    ----------
    images:
        ``(N, 3, H, W)`` float in [0, 1] (a downsampled copy is enough).
    quantile:
        Brightness (R+G+B) quantile above which pixels count as background.
    """
    n = images.shape[0]
    px = images.reshape(n, 3, -1)
    br = px.sum(1)  # (N, P)
    k = max(1, int(round(quantile * br.shape[1])))
    thr = br.kthvalue(min(k, br.shape[1]), dim=1, keepdim=True).values
    sel = (br >= thr).to(px.dtype)  # (N, P)
    bg = (px * sel[:, None]).sum(-1) / sel.sum(-1, keepdim=True).clamp(min=1)
    return bg.clamp(min=_EPS)


def density_features(images: torch.Tensor, bg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Total optical density ``t`` and blue/green density ratio ``r``, each ``(N, H, W)``."""
    od = -torch.log((images / bg[:, :, None, None]).clamp(_EPS, 1.0))
    t = od.sum(1)
    r = od[:, 2] / od[:, 1].clamp(min=0.02)
    return t, r


def otsu_threshold(values: torch.Tensor, *, bins: int = 256) -> tuple[float, float, float] | None:
    """Otsu's threshold of a 1-D sample and the two class means; ``None`` when degenerate."""
    v = values.double()
    if v.numel() < 16:
        return None
    lo, hi = v.quantile(0.001).item(), v.quantile(0.999).item()
    if not hi > lo:
        return None
    hist = torch.histc(v.clamp(lo, hi), bins=bins, min=lo, max=hi)
    centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    w0 = hist.cumsum(0)
    m0 = (hist * centres).cumsum(0)
    total, mtotal = w0[-1], m0[-1]
    w1 = total - w0
    valid = (w0 > 0) & (w1 > 0)
    mu0 = m0 / w0.clamp(min=1e-12)
    mu1 = (mtotal - m0) / w1.clamp(min=1e-12)
    between = torch.where(valid, w0 * w1 * (mu0 - mu1) ** 2, torch.zeros_like(w0))
    i = int(between.argmax())
    if not valid[i]:
        return None
    thr = lo + (i + 1) * (hi - lo) / bins
    return thr, mu0[i].item(), mu1[i].item()


class ColourSegmenter:
    """Soft background / red cell / WBC cytoplasm / WBC nucleus segmentation (see module doc).

    Parameters
    ----------
    work_size:
        Short side (pixels) of the downsampled copy the segmentation runs on.
    bg_quantile:
        Brightness quantile above which pixels define an image's background colour.
    wbc_radius:
        How far cytoplasm may extend from a nucleus, as a fraction of the image's short side.
    softness:
        Width of each logistic membership, as a fraction of the gap between the two Otsu class
        means (small: near-hard labels; large: wide blending).
    max_pixels:
        Pixels sampled (seeded) from the training images for learning the thresholds.
    """

    def __init__(self, *, work_size: int = 64, bg_quantile: float = 0.8, wbc_radius: float = 0.25,
                 softness: float = 0.1, max_pixels: int = 400_000) -> None:
        if work_size < 8:
            raise ConfigError(f"work_size must be at least 8 pixels, got {work_size}")
        self.work_size = int(work_size)
        self.bg_quantile = float(bg_quantile)
        self.wbc_radius = float(wbc_radius)
        self.softness = float(softness)
        self.max_pixels = int(max_pixels)
        # (threshold, width) of the three memberships; defaults until fitted
        self.thresholds = torch.tensor([_DEFAULTS["t_bg"], _DEFAULTS["r_wbc"], _DEFAULTS["t_nuc"]])
        self.widths = torch.tensor([0.2, 0.04, 0.15])
        self.fitted = False

    def params(self) -> dict:
        return {"work_size": self.work_size, "bg_quantile": self.bg_quantile,
                "wbc_radius": self.wbc_radius, "softness": self.softness, "max_pixels": self.max_pixels}

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, images: torch.Tensor, *, seed: int = 0, batch_size: int = 256) -> Self:
        """Learn the three thresholds from unlabelled ``(N, 3, H, W)`` images in [0, 1] (or uint8, read a
        batch at a time as float32 ``k / 255``: the same thresholds as their float copy)."""
        check_batch(images, allow_uint8=True)
        if images.shape[0] == 0:
            raise ConfigError("ColourSegmenter.fit needs at least one image")
        g = torch.Generator().manual_seed(seed)
        n = images.shape[0]
        per_image = max(64, self.max_pixels // n)
        ts, rs = [], []
        for s in range(0, n, batch_size):
            small = downsample(as_float01(images[s:s + batch_size].cpu()).float(), self.work_size)
            bg = background_colour(small, quantile=self.bg_quantile)
            t, r = density_features(small, bg)
            t, r = t.reshape(t.shape[0], -1), r.reshape(r.shape[0], -1)
            p = t.shape[1]
            if p > per_image:
                idx = torch.rand(t.shape[0], p, generator=g).argsort(1)[:, :per_image]
                t, r = t.gather(1, idx), r.gather(1, idx)
            ts.append(t.reshape(-1))
            rs.append(r.reshape(-1))
        t, r = torch.cat(ts), torch.cat(rs)
        soft = self.softness
        thr = dict(_DEFAULTS)
        wid = {"t_bg": 0.2, "r_wbc": 0.04, "t_nuc": 0.15}

        res = otsu_threshold(torch.log(t.clamp(min=1e-4)))
        if res is not None:
            thr["t_bg"], m0, m1 = res
            wid["t_bg"] = max(soft * (m1 - m0), 1e-3)
        # the hue ratio is noisy in faint pixels: learn it from clearly stained ones only
        stained = t > 3.0 * math.exp(thr["t_bg"])
        res = otsu_threshold(r[stained].clamp(0, 1.5)) if stained.any() else None
        if res is not None:
            thr["r_wbc"], m0, m1 = res
            wid["r_wbc"] = max(soft * (m1 - m0), 1e-3)
        wbc = stained & (r < thr["r_wbc"])  # clearly stained and WBC-hued
        # density spans a factor of ~10 inside a WBC: split it on a square-root scale (between
        # linear, which cuts into pale nuclei, and log, which eats dense cytoplasm)
        res = otsu_threshold(torch.sqrt(t[wbc])) if wbc.any() else None
        if res is not None:
            st, m0, m1 = res
            thr["t_nuc"] = st * st
            wid["t_nuc"] = max(soft * (m1 * m1 - m0 * m0), 1e-3)
        self.thresholds = torch.tensor([thr["t_bg"], thr["r_wbc"], thr["t_nuc"]], dtype=torch.float32)
        self.widths = torch.tensor([wid["t_bg"], wid["r_wbc"], wid["t_nuc"]], dtype=torch.float32)
        self.fitted = True
        return self

    # -- prediction -----------------------------------------------------------------------------
    def _check(self) -> None:
        if not self.fitted:
            raise ConfigError("ColourSegmenter must be fitted (or loaded) before predicting; "
                              "call .fit(training_images) or use segment(images)")

    def proba_lowres(self, images: torch.Tensor, bg: torch.Tensor | None = None) -> torch.Tensor:
        """Soft memberships ``(N, 4, h, w)`` on the downsampled grid (channels: :data:`REGIONS`).

        ``bg`` optionally gives the per-image background colours ``(N, 3)``.
        """
        self._check()
        check_batch(images)
        small = downsample(images.float(), self.work_size)
        if bg is None:
            bg = background_colour(small, quantile=self.bg_quantile)
        t, r = density_features(small, bg)
        th = self.thresholds.to(images.device)
        wd = self.widths.to(images.device)
        p_fg = torch.sigmoid((torch.log(t.clamp(min=1e-4)) - th[0]) / wd[0])
        p_wbc = torch.sigmoid((th[1] - r) / wd[1])
        p_dense = torch.sigmoid((t - th[2]) / wd[2])
        # very dense pixels are nucleus whatever their hue (2x the nucleus threshold)
        p_very = torch.sigmoid((t - 2.0 * th[2]) / wd[2])
        nuc = p_fg * torch.maximum(p_wbc, p_very) * p_dense
        # spatial rule: cytoplasm only near a nucleus (dilate hard nucleus map, then smooth)
        h, w = nuc.shape[-2:]
        rad = max(1, int(round(self.wbc_radius * min(h, w))))
        near = F.max_pool2d((nuc > 0.5).float()[:, None], 2 * rad + 1, stride=1, padding=rad)
        near = F.avg_pool2d(near, 5, stride=1, padding=2, count_include_pad=False)[:, 0]
        cyto = p_fg * p_wbc * (1 - p_dense) * near
        rbc = (p_fg - nuc - cyto).clamp(min=0)
        return torch.stack([1 - p_fg, rbc, cyto, nuc], dim=1)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Soft memberships ``(N, 4, H, W)`` at full resolution, summing to 1 per pixel."""
        p = self.proba_lowres(images)
        if p.shape[-2:] != images.shape[-2:]:
            p = F.interpolate(p, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return p

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Hard labels ``uint8 (N, H, W)`` with values in :data:`REGIONS` (0, 1, 3, 4)."""
        p = self.predict_proba(images)
        lut = torch.tensor(REGIONS, dtype=torch.uint8, device=p.device)
        return lut[p.argmax(1)]

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"thresholds": self.thresholds.clone(), "widths": self.widths.clone(),
                "options": torch.tensor([self.work_size, self.bg_quantile, self.wbc_radius,
                                         self.softness, self.max_pixels], dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        try:
            self.thresholds = state["thresholds"].float().cpu()
            self.widths = state["widths"].float().cpu()
            o = state["options"].tolist()
        except KeyError as exc:
            raise CheckpointError(f"segmenter state lacks {exc}; re-fit the model") from None
        self.work_size, self.bg_quantile, self.wbc_radius = int(o[0]), float(o[1]), float(o[2])
        self.softness, self.max_pixels = float(o[3]), int(o[4])
        self.fitted = True


def segment(images: torch.Tensor, *, seed: int = 0, **options) -> torch.Tensor:
    """Segment ``(N, 3, H, W)`` images with a :class:`ColourSegmenter` fitted on them.

    Returns ``uint8 (N, H, W)`` labels 0 background, 1 red cell, 3 cytoplasm, 4 nucleus.
    """
    return ColourSegmenter(**options).fit(images, seed=seed).predict(images)
