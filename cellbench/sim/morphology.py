"""Class-conditional morphology measured from a labelled folder of real blood-cell images.

The simulator's scenes (:mod:`cellbench.sim.scene`) draw cell sizes, nucleus shapes, textures,
granules, red-cell packing and platelets from distributions *measured* on real images, kept as a
versioned data file (``cellbench/sim/params/morphology-pbc-v2.json``, measured from the PBC DM96
images with ``cellbench simulate measure --real DIR --out FILE``), not as constants in code. Its
``derived`` section (version 2) holds the scene generator's rendering corrections with their
provenance (:func:`packaged_derived`).

Measurement (per image, centre crop of ``size`` px, the classifier's view)
--------------------------------------------------------------------------
Regions come from the project's own unsupervised segmentation,
:class:`cellbench.segmentation.ColourSegmenter` (optical density relative to the image's own
background, Otsu thresholds learned from the folder itself), run at full resolution; the soft
memberships are smoothed (Gaussian, 1.5 px) before the arg-max so that chromatin texture does
not fragment the nucleus. Then, with ``t`` the summed optical density
``-ln(I / I_background)`` over R, G, B:

* **white cell**: the nucleus components whose centroid lies within ``0.3 size`` of the centre
  (and within ``0.35 size`` of the largest of them) form the nucleus; the cell is the convex hull
  of the nucleus and the cytoplasm pixels connected to it (after a closing and hole filling).
  Where the ring around the nucleus is mostly labelled red cell and hardly cytoplasm (the
  haemoglobinised cytoplasm of polychromatic and orthochromatic erythroblasts, which a colour
  segmentation cannot tell from red cells), the cell also takes in the round body around the
  nucleus: a distance-transform watershed seeded by the nucleus and by the other bodies' distance
  maxima, so red cells touching the white cell stay out (:func:`_red_cytoplasm`, :func:`_basin`).
  Areas in px; the nucleus/cell area ratio; the nucleus offset from the cell centroid over the
  cell's equivalent radius.
* **nucleus shape**: solidity (area / convex-hull area: indentation), eccentricity (from the
  second moments), and the lobe count: connected components of the nucleus pixels whose
  distance to the nucleus border (EDT) exceeds 45 % of its maximum, each at least 4 % of the
  nucleus; a single lobe with solidity below 0.8 is a band (curved, unsegmented) nucleus;
  the mean nucleus width (twice the mean EDT on its skeleton-like ridge, approximated by the
  pixels above 60 % of the maximum EDT).
* **chromatin texture**: the coefficient of variation of ``t`` in the nucleus (eroded by 2 px) at
  two scales, fine (``t - G_2 * t``) and coarse (``G_2 * t - G_6 * t``), ``G_s`` a Gaussian of sigma
  ``s`` px (a two-band power spectrum).
* **cytoplasm**: mean optical density per channel (R, G, B) of the cell minus the dilated nucleus;
  its granularity (CV of ``t - G_3 * t``) and granule size: the radius (px) where the radial
  autocorrelation of that high-passed density falls to one half; vacuoles: pale holes
  (``t`` below 45 % of the cytoplasm median, 8-400 px) inside the cell.
* **red cells**: connected red-cell components outside the (dilated) white cell; diameter as twice
  the upper quartile of their largest EDT (as :mod:`cellbench.data.scale`); packing: the fraction
  of the image outside the white cell covered by red cells; central pallor: mean ``t`` at the
  centre of whole red cells (EDT > 0.6 max) over mean ``t`` of their ring (EDT 0.15-0.45 max).
* **platelets**: small dense components (nucleus- or cytoplasm-labelled, 15-900 px) away from the
  white cell: count per image and area; in the ``platelet`` class the central object's area and
  number of pieces (single vs clumped) instead of a white cell.

Per class the folder gives, for each scalar, ``mean``, ``sd`` and the quantiles ``q05 q25 q50 q75 q95``
over images (failures to find a cell are counted, not averaged), the lobe-count histogram, and the
Gaussian copula of the features the scene generator draws per cell (:data:`COPULA_FEATURES`;
:func:`copula`: the correlation of their normal scores). :func:`measure_folder` returns the JSON-able
dictionary, :func:`save_morphology` writes it atomically, :func:`load_morphology` reads and checks it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..data.classes import CLASSES
from ..errors import ConfigError, DatasetError

__all__ = [
    "DEFAULT_MORPHOLOGY",
    "CYT_FACTOR_NAMES",
    "COPULA_FEATURES",
    "copula",
    "soft_label_error",
    "DERIVED_CLASS",
    "DERIVED_GLOBAL",
    "MORPHOLOGY_VERSION",
    "packaged_derived",
    "measure_folder",
    "measure_images",
    "measure_image",
    "save_morphology",
    "load_morphology",
    "load_folder_images",
    "count_lobes",
    "summarize",
]

#: Version 2 added the ``derived`` section (the scene generator's rendering corrections); a
#: version-1 file (measurements only) is still read, with the packaged corrections.
MORPHOLOGY_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: The packaged parameters, measured from the PBC DM96 images (docs/simulator.md).
DEFAULT_MORPHOLOGY = Path(__file__).resolve().parent / "params" / "morphology-pbc-v2.json"

#: Rendering corrections the scene generator reads from the ``derived`` section, global and per
#: white-cell class (:mod:`cellbench.sim.scene`; each one's provenance is in ``derived.how``).
DERIVED_GLOBAL = ("nuc_area_gain", "chrom_gain", "solid_solidity", "cyt_tex_coarse", "cyt_tex_fine",
                  "cyt_cv_gain", "cyt_cv_max", "pallor_gain", "rbc_min_separation", "vacuole_baseline",
                  "plt_r_gain")
DERIVED_CLASS = ("nuc_of_dense", "area_gain", "chrom_gain", "gran_r", "gran_cover", "cyt_factor_sd", "cyt_tex_coarse")
#: The directions of ``cyt_factor_sd`` (one sigma each; :data:`cellbench.sim.scene.CYT_FACTORS`).
CYT_FACTOR_NAMES = ("amount", "eosinophilia")

#: Scalar features of a white-cell class, and of every image (field).
WBC_FEATURES = (
    "cell_area", "nuc_area", "nc_ratio", "nuc_offset", "nuc_solidity", "nuc_eccentricity", "nuc_lobes",
    "nuc_width", "nuc_od", "chrom_fine", "chrom_coarse", "cyt_od_r", "cyt_od_g", "cyt_od_b", "cyt_od",
    "cyt_granularity", "granule_radius", "vacuoles",
)
FIELD_FEATURES = ("rbc_diameter", "rbc_cover", "rbc_pallor", "rbc_od", "platelets", "platelet_area")
PLATELET_FEATURES = ("plt_area", "plt_pieces", "plt_od")
_QUANTILES = (5, 25, 50, 75, 95)
#: The white-cell features the scene generator draws jointly through the class's measured Gaussian copula
#: (:func:`copula`; ``classes.<class>.copula`` of the file): a real large lymphocyte is large *and* has a
#: low nucleus/cell ratio and paler chromatin, which independent draws of the marginals lose.
COPULA_FEATURES = ("cell_area", "nc_ratio", "nuc_offset", "nuc_eccentricity", "nuc_solidity", "nuc_width",
                   "chrom_fine", "chrom_coarse", "cyt_od")


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def count_lobes(nucleus: np.ndarray, *, level: float = 0.45, min_fraction: float = 0.04) -> int:
    """Number of lobes of a binary nucleus mask.

    A lobe is a connected component of the pixels whose distance to the border (EDT) exceeds
    ``level`` times the largest distance, with at least ``min_fraction`` of the nucleus area
    (thin strands between lobes fall below the level, so the lobes separate; a round or band
    nucleus stays one component).
    """
    m = np.asarray(nucleus, bool)
    if not m.any():
        return 0
    edt = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    core = edt > level * edt.max()
    lab, n = ndi.label(core)
    if n == 0:
        return 0
    # each core component claims the nucleus pixels nearest to it
    sizes = np.bincount(lab.ravel())[1:]
    _, idx = ndi.distance_transform_edt(lab == 0, return_indices=True)
    owner = lab[idx[0], idx[1]] * m
    area = np.bincount(owner.ravel(), minlength=n + 1)[1:]
    return int(max(1, ((area >= min_fraction * m.sum()) & (sizes > 0)).sum()))


def _solidity_ecc(mask: np.ndarray) -> tuple[float, float]:
    from skimage.measure import regionprops

    props = regionprops(mask.astype(np.uint8))
    if not props:
        return math.nan, math.nan
    p = props[0]
    return float(p.solidity), float(p.eccentricity)


def _autocorr_radius(hp: np.ndarray, region: np.ndarray) -> float:
    """Radius (px) where the radial autocorrelation of ``hp`` inside ``region`` falls to 1/2."""
    ys, xs = np.nonzero(region)
    if len(ys) < 200:
        return math.nan
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    a = np.where(region, hp - hp[region].mean(), 0.0)[y0:y1, x0:x1]
    w = region[y0:y1, x0:x1].astype(np.float64)
    sh = (2 * a.shape[0], 2 * a.shape[1])
    fa, fw = np.fft.rfft2(a, sh), np.fft.rfft2(w, sh)
    ac = np.fft.irfft2(fa * np.conj(fa), sh)
    nw = np.fft.irfft2(fw * np.conj(fw), sh)
    ac = ac / np.maximum(nw, 1.0)
    ac = np.fft.fftshift(ac)
    cy, cx = sh[0] // 2, sh[1] // 2
    yy, xx = np.mgrid[-6:7, -6:7]
    rr = np.hypot(yy, xx)
    patch = ac[cy - 6 : cy + 7, cx - 6 : cx + 7]
    if patch[6, 6] <= 0:
        return math.nan
    prof = [patch[(rr >= r - 0.5) & (rr < r + 0.5)].mean() / patch[6, 6] for r in range(0, 7)]
    for r in range(1, 7):
        if prof[r] < 0.5:
            f = (prof[r - 1] - 0.5) / max(prof[r - 1] - prof[r], 1e-9)
            return float(r - 1 + f)
    return 6.0


def _region_labels(seg, images: np.ndarray) -> np.ndarray:
    """Hard labels (0 bg, 1 red, 3 cyto, 4 nucleus) from the fitted segmenter's memberships.

    The memberships are those of :meth:`cellbench.segmentation.ColourSegmenter.proba_lowres`
    (same features, thresholds and widths), computed at full resolution with the spatial rule
    (cytoplasm within ``wbc_radius`` of a nucleus) done by a distance transform instead of a wide
    max-pool, and smoothed (Gaussian, 1.5 px) before the arg-max.
    """
    import torch

    from ..segmentation import background_colour, density_features

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    bg = background_colour(x, quantile=seg.bg_quantile)
    t, r = (a.numpy().astype(np.float64) for a in density_features(x, bg))
    th, wd = seg.thresholds.numpy().astype(np.float64), seg.widths.numpy().astype(np.float64)

    def sig(z):
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    p_fg = sig((np.log(np.maximum(t, 1e-4)) - th[0]) / wd[0])
    p_wbc = sig((th[1] - r) / wd[1])
    p_dense = sig((t - th[2]) / wd[2])
    p_very = sig((t - 2.0 * th[2]) / wd[2])
    nuc = p_fg * np.maximum(p_wbc, p_very) * p_dense
    out = np.empty(t.shape, np.uint8)
    rad = seg.wbc_radius * min(t.shape[1:])
    for i in range(len(t)):
        hard = nuc[i] > 0.5
        near = (ndi.distance_transform_edt(~hard) <= rad) if hard.any() else np.zeros_like(hard)
        near = ndi.uniform_filter(near.astype(np.float64), 5)
        cyto = p_fg[i] * p_wbc[i] * (1 - p_dense[i]) * near
        rbc = np.maximum(p_fg[i] - nuc[i] - cyto, 0)
        p = np.stack([1 - p_fg[i], rbc, cyto, nuc[i]])
        p = ndi.gaussian_filter(p, (0, 1.5, 1.5), mode="nearest")
        out[i] = np.array([0, 1, 3, 4], np.uint8)[p.argmax(0)]
    return out


def _density(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel optical density ``(H, W, 3)`` (natural log) and its sum ``t``."""
    img = image.astype(np.float64) / 255.0
    br = img.sum(2)
    bg = img[br >= np.quantile(br, 0.8)].mean(0)
    od = -np.log(np.clip(img / np.maximum(bg, 1e-3), 1e-3, 1.0))
    return od, od.sum(2)


def _field(labels: np.ndarray, t: np.ndarray, cell: np.ndarray) -> dict:
    h, w = labels.shape
    out: dict[str, float] = {}
    away = ~ndi.binary_dilation(cell, _disk(4)) if cell.any() else np.ones_like(cell)
    red = ndi.binary_fill_holes(ndi.binary_closing(labels == 1, _disk(2))) & away
    out["rbc_cover"] = float(red.sum() / max(away.sum(), 1))
    lab, n = ndi.label(red)
    out["rbc_od"] = float(t[red].mean()) if red.any() else math.nan
    if n:
        edt = ndi.distance_transform_edt(np.pad(red, 1))[1:-1, 1:-1]
        radii = ndi.maximum(edt, lab, np.arange(1, n + 1))
        big = np.asarray(radii) >= 12
        out["rbc_diameter"] = float(2.0 * np.percentile(np.asarray(radii)[big], 75)) if big.any() else math.nan
        ratios = []
        for k in np.nonzero(big)[0][:12]:
            comp = lab == k + 1
            e = edt[comp]
            mx = e.max()
            tt = t[comp]
            c, ring = tt[e > 0.6 * mx], tt[(e > 0.15 * mx) & (e < 0.45 * mx)]
            if len(c) > 5 and len(ring) > 20 and ring.mean() > 0:
                ratios.append(c.mean() / ring.mean())
        out["rbc_pallor"] = float(np.median(ratios)) if ratios else math.nan
    else:
        out["rbc_diameter"] = out["rbc_pallor"] = math.nan
    small = ((labels == 4) | (labels == 3)) & away
    slab, sn = ndi.label(small)
    areas = np.bincount(slab.ravel())[1:] if sn else np.zeros(0)
    plt = areas[(areas >= 15) & (areas <= 900)]
    out["platelets"] = float(len(plt))
    out["platelet_area"] = float(np.median(plt)) if len(plt) else math.nan
    return out


#: The ring around the nucleus (px beyond its border) that decides whether its cytoplasm looks like red cells.
RED_RING_PX = (1, 6)


def _red_cytoplasm(labels: np.ndarray, nucleus: np.ndarray) -> bool:
    """True when the cytoplasm around ``nucleus`` is coloured like red cells (haemoglobinised: the
    polychromatic / orthochromatic erythroblast's), so that the colour segmentation labels it red cell:
    in the ring :data:`RED_RING_PX` around the nucleus, under a quarter of the pixels are cytoplasm
    and over half are red cell."""
    ring = ndi.binary_dilation(nucleus, _disk(RED_RING_PX[1])) & ~ndi.binary_dilation(nucleus, _disk(RED_RING_PX[0]))
    if not ring.any():
        return False
    lr = labels[ring]
    return bool((lr == 3).mean() < 0.25 and (lr == 1).mean() > 0.5)


def _basin(labels: np.ndarray, nucleus: np.ndarray, *, min_distance: int = 15) -> np.ndarray:
    """The round body around ``nucleus`` when its cytoplasm is labelled red cell: a watershed of the
    foreground's distance transform (the classic split of touching round objects, Beucher &
    Lantuejoul 1979) from the nucleus (dilated 2 px) and from the distance maxima of the other
    bodies (at least ``min_distance`` px apart), so that red cells touching the white cell stay out."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    fg = ndi.binary_fill_holes(ndi.binary_closing(labels > 0, _disk(2)))
    edt = ndi.distance_transform_edt(fg)
    seed = ndi.binary_dilation(nucleus, _disk(2))
    markers = np.zeros(labels.shape, np.int32)
    markers[seed] = 1
    far = ~ndi.binary_dilation(nucleus, _disk(8))
    peaks = peak_local_max(edt, min_distance=min_distance, labels=fg.astype(np.int32), exclude_border=False)
    for i, (y, x) in enumerate(peaks):
        if far[y, x]:
            markers[y, x] = i + 2
    return watershed(-edt, markers, mask=fg | seed) == 1


def measure_image(image: np.ndarray, labels: np.ndarray, cls: str | None = None) -> dict:
    """Features of one image ``(H, W, 3)`` uint8 given its region ``labels`` ``(H, W)``.

    Returns a dict of the scalars of :data:`WBC_FEATURES` (or :data:`PLATELET_FEATURES` for the
    ``platelet`` class) and :data:`FIELD_FEATURES`; ``found`` is False when no centred cell.
    """
    h, w = labels.shape
    od, t = _density(image)
    yy, xx = np.mgrid[0:h, 0:w]
    cy0, cx0 = (h - 1) / 2, (w - 1) / 2
    dense = labels == 4
    dense = ndi.binary_opening(dense, _disk(1))
    lab, n = ndi.label(dense)
    out: dict = {"found": False}
    nucleus = np.zeros_like(dense)
    if n:
        idx = np.arange(1, n + 1)
        areas = ndi.sum(dense, lab, idx)
        com = np.array(ndi.center_of_mass(dense, lab, idx)).reshape(-1, 2)
        dc = np.hypot(com[:, 0] - cy0, com[:, 1] - cx0)
        near = (dc < 0.3 * min(h, w)) & (areas >= 10)
        if near.any():
            big = idx[near][np.argmax(areas[near])]
            bc = com[big - 1]
            keep = idx[near & (np.hypot(com[:, 0] - bc[0], com[:, 1] - bc[1]) < 0.35 * min(h, w))]
            nucleus = np.isin(lab, keep)
    if cls == "platelet":
        if nucleus.any():
            core = ndi.binary_fill_holes(ndi.binary_closing(nucleus | ndi.binary_dilation(nucleus, _disk(2))
                                                            & (labels == 3), _disk(2)))
            plab, pn = ndi.label(ndi.binary_dilation(nucleus, _disk(3)) & (nucleus | (labels == 3)))
            out.update(found=True, plt_area=float(core.sum()), plt_pieces=float(ndi.label(nucleus)[1]),
                       plt_od=float(t[nucleus].mean()))
        out.update(_field(labels, t, ndi.binary_dilation(nucleus, _disk(6)) if nucleus.any() else nucleus))
        return out
    if not nucleus.any() or nucleus.sum() < 150:
        out.update(_field(labels, t, nucleus))
        return out
    # the cell: nucleus plus the cytoplasm connected to it, closed, holes filled, convex hull
    from skimage.morphology import convex_hull_image

    cand = ndi.binary_closing(nucleus | (labels == 3), _disk(2))
    clab, _ = ndi.label(cand)
    ids = np.unique(clab[nucleus])
    cell = ndi.binary_fill_holes(np.isin(clab, ids[ids > 0]))
    cell = ndi.binary_opening(cell, _disk(3)) | nucleus
    if _red_cytoplasm(labels, nucleus):
        cell = cell | _basin(labels, nucleus)
    cell = convex_hull_image(cell)
    nuc_f = ndi.binary_fill_holes(ndi.binary_closing(nucleus, _disk(2))) & cell
    ca, na = float(cell.sum()), float(nuc_f.sum())
    ccy, ccx = yy[cell].mean(), xx[cell].mean()
    ncy, ncx = yy[nuc_f].mean(), xx[nuc_f].mean()
    sol, ecc = _solidity_ecc(nuc_f)
    edt = ndi.distance_transform_edt(np.pad(nuc_f, 1))[1:-1, 1:-1]
    lobes = count_lobes(nuc_f)
    ridge = edt > 0.6 * edt.max()
    inner = ndi.binary_erosion(nuc_f, _disk(2))
    if inner.sum() < 30:
        inner = nuc_f
    g2, g6 = ndi.gaussian_filter(t, 2.0), ndi.gaussian_filter(t, 6.0)
    tm = float(t[inner].mean())
    cyt = cell & ~ndi.binary_dilation(nuc_f, _disk(3))
    cyt_in = ndi.binary_erosion(cyt, _disk(2))
    if cyt_in.sum() < 100:
        cyt_in = cyt
    out.update(
        found=True,
        cell_area=ca,
        nuc_area=na,
        nc_ratio=na / max(ca, 1.0),
        nuc_offset=float(math.hypot(ncy - ccy, ncx - ccx) / math.sqrt(ca / math.pi)),
        nuc_solidity=sol,
        nuc_eccentricity=ecc,
        nuc_lobes=float(lobes),
        nuc_width=float(2.0 * edt[ridge].mean()) if ridge.any() else math.nan,
        nuc_od=tm,
        chrom_fine=float((t - g2)[inner].std() / max(tm, 1e-6)),
        chrom_coarse=float((g2 - g6)[inner].std() / max(tm, 1e-6)),
    )
    if cyt_in.sum() >= 50:
        cod = od[cyt_in].mean(0)
        ct = float(t[cyt_in].mean())
        hp = t - ndi.gaussian_filter(t, 3.0)
        holes = cell & ~nuc_f & (t < 0.45 * float(np.median(t[cyt_in])))
        hl, hn = ndi.label(holes & ~ndi.binary_dilation(~cell, _disk(3)))
        hsz = np.bincount(hl.ravel())[1:] if hn else np.zeros(0)
        out.update(
            cyt_od_r=float(cod[0]), cyt_od_g=float(cod[1]), cyt_od_b=float(cod[2]), cyt_od=ct,
            cyt_granularity=float(hp[cyt_in].std() / max(ct, 1e-6)),
            granule_radius=_autocorr_radius(hp, cyt_in),
            vacuoles=float(((hsz >= 8) & (hsz <= 400)).sum()),
        )
    out.update(_field(labels, t, cell))
    return out


def measure_images(images: dict[str, np.ndarray], *, seed: int = 0, progress: bool = False) -> dict[str, list[dict]]:
    """Per-image features, per class, of ``{class: uint8 (N, H, W, 3)}`` (one segmenter for all)."""
    import torch

    from ..segmentation import ColourSegmenter

    allimg = np.concatenate([v for v in images.values() if len(v)])
    seg = ColourSegmenter(work_size=max(allimg.shape[1:3])).fit(
        torch.from_numpy(allimg[:: max(1, len(allimg) // 400)]).permute(0, 3, 1, 2).float() / 255.0, seed=seed
    )
    out: dict[str, list[dict]] = {}
    for cls, imgs in images.items():
        rows = []
        for s in range(0, len(imgs), 32):
            labs = _region_labels(seg, imgs[s : s + 32])
            for im, lb in zip(imgs[s : s + 32], labs, strict=True):
                rows.append(measure_image(im, lb, cls))
        out[cls] = rows
        if progress:
            print(f"measured {len(rows)} {cls} images", flush=True)
    return out


def _stats(values: list[float]) -> dict | None:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if len(v) == 0:
        return None
    q = np.percentile(v, _QUANTILES)
    d = {"n": int(len(v)), "mean": float(v.mean()), "sd": float(v.std(ddof=1) if len(v) > 1 else 0.0)}
    d.update({f"q{p:02d}": float(x) for p, x in zip(_QUANTILES, q, strict=True)})
    return d


def copula(found: list[dict], features: tuple[str, ...] = COPULA_FEATURES) -> dict | None:
    """The Gaussian copula of ``features`` over one class's measured cells: the correlation matrix of their
    normal scores (van der Waerden: rank ``r`` of ``n`` -> ``Phi^-1(r / (n + 1))``, ties averaged), a
    rank-based, consistent estimator of the copula's correlation that ignores the marginals (they stay
    the measured quantiles). Cells missing a feature are left out; ``None`` below 20 complete cells.
    The matrix is projected onto the positive-definite ones (eigenvalues at least 1e-3, unit diagonal)
    so that the scene generator can factor it.

    Returns ``{"features": [...], "corr": [[...]], "n": cells}``.
    """
    from scipy.special import ndtri
    from scipy.stats import rankdata

    x = np.array([[r.get(f, math.nan) for f in features] for r in found], np.float64).reshape(-1, len(features))
    x = x[np.isfinite(x).all(axis=1)]
    n = len(x)
    if n < 20:
        return None
    if (x.std(axis=0) == 0).any():  # a constant feature: no correlation to measure
        return None
    z = ndtri(np.column_stack([rankdata(col) for col in x.T]) / (n + 1))
    return {"features": list(features), "corr": _positive_definite(np.corrcoef(z, rowvar=False)).round(4).tolist(),
            "n": int(n)}


def _positive_definite(c: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Nearest-by-eigenvalue-clipping correlation matrix with eigenvalues at least ``floor`` (unit diagonal)."""
    c = 0.5 * (c + c.T)
    w, v = np.linalg.eigh(c)
    c = (v * np.maximum(w, floor)) @ v.T
    d = np.sqrt(np.diag(c))
    c = c / np.outer(d, d)
    np.fill_diagonal(c, 1.0)
    return c


def summarize(rows: dict[str, list[dict]]) -> dict:
    """Per-class distributions (``mean, sd, n, q05..q95``; lobe histogram) of :func:`measure_images` rows."""
    classes: dict[str, dict] = {}
    for cls, rs in rows.items():
        found = [r for r in rs if r.get("found")]
        feats = PLATELET_FEATURES if cls == "platelet" else WBC_FEATURES
        c: dict = {"n_images": len(rs), "n_found": len(found)}
        for f in feats:
            s = _stats([r.get(f, math.nan) for r in found])
            if s is not None:
                c[f] = s
        for f in FIELD_FEATURES:
            s = _stats([r.get(f, math.nan) for r in rs])
            if s is not None:
                c[f] = s
        if cls != "platelet" and found:
            lobes = np.array([r["nuc_lobes"] for r in found], int)
            c["lobe_hist"] = {str(k): float((np.minimum(lobes, 5) == k).mean()) for k in range(1, 6)}
            band = [r for r in found if r["nuc_lobes"] == 1 and r["nuc_solidity"] < 0.8]
            c["band_fraction"] = float(len(band) / len(found))
            cop = copula(found)
            if cop is not None:
                c["copula"] = cop
        if cls == "platelet" and found:
            pieces = np.array([r["plt_pieces"] for r in found])
            c["clumped_fraction"] = float((pieces >= 2).mean())
        classes[cls] = c
    return classes


def load_folder_images(folder: str | os.PathLike, limit_per_class: int | None, size: int = 256,
                       split: str | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """``{class: uint8 (N, size, size, 3)}`` centre crops of a labelled folder (``FOLDER/<class>/<image>``):
    the images of ``split`` (``train``/``val``/``test`` of the folder's seeded split; ``None``: all),
    at most ``limit_per_class`` per class, evenly spaced in file order."""
    from ..data.folders import index_labelled
    from ..io import read_image
    from ..tensors import center_crop_or_pad

    items, _ = index_labelled(Path(folder), write_split=False, seed=seed)
    out = {}
    for cls in CLASSES:
        its = [it for it in items if it.cls == cls and (split is None or it.split == split)]
        if not its:
            continue
        if limit_per_class is not None and len(its) > limit_per_class:
            pick = np.linspace(0, len(its) - 1, limit_per_class).round().astype(int)
            its = [its[i] for i in pick]
        out[cls] = np.stack([center_crop_or_pad(read_image(it.path), size) for it in its])
    if not out:
        raise DatasetError(f"{folder}: no images of the known classes ({', '.join(CLASSES)}) in class folders")
    return out


def measure_folder(folder: str | os.PathLike, *, limit_per_class: int | None = None, progress: bool = False,
                   size: int = 256, split: str | None = None, seed: int = 0) -> dict:
    """Measure the class-conditional morphology of a labelled folder (``FOLDER/<class>/<image>``).

    Parameters
    ----------
    folder:
        Labelled image folder (the PBC layout).
    limit_per_class:
        Measure at most this many images per class (evenly spaced in file order).
    progress:
        Print one line per class.
    size:
        Centre crop side in px (the simulator's canvas; 256 at ~0.1 um/px for DM96).
    split:
        Only the images of this split (``train``/``val``/``test``) of the folder's seeded split.

    Returns
    -------
    dict
        JSON-able: ``version``, ``source`` (folder name, image counts, crop, split), ``method``,
        ``classes`` ({class: {feature: {mean, sd, n, q05..q95}, lobe_hist, ...}}).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder; give a labelled folder FOLDER/<class>/<image>")
    if limit_per_class is not None and int(limit_per_class) < 1:
        raise ConfigError(f"limit_per_class={limit_per_class}: must be at least 1")
    images = load_folder_images(folder, limit_per_class, size, split, seed)
    rows = measure_images(images, seed=seed, progress=progress)
    from .. import __version__

    return {
        "version": MORPHOLOGY_VERSION,
        "source": {
            "folder": folder.name,
            "images_per_class": {c: int(len(v)) for c, v in images.items()},
            "crop_px": int(size),
            "split": split or "all",
            "cellbench": __version__,
        },
        "method": "cellbench.sim.morphology.measure_folder (ColourSegmenter at full resolution; see module doc)",
        "classes": summarize(rows),
        "derived": packaged_derived(),
    }


def packaged_derived() -> dict:
    """The ``derived`` section of the packaged file: the scene generator's rendering corrections.

    They relate what the simulator draws to what the measurement returns on its rendered images
    (closure: measuring simulated scenes with :func:`measure_images` must give back the real
    figures, ``benchmarks/sim_realism.py``), or were chosen against real montages and the realism
    check (``cellbench simulate validate``); each entry's provenance is in ``derived.how``. They
    belong to the renderer, not to a folder, so :func:`measure_folder` writes them unchanged into
    every new file (a file for another microscope keeps the same corrections).
    """
    try:
        data = json.loads(DEFAULT_MORPHOLOGY.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{DEFAULT_MORPHOLOGY}: packaged morphology file unreadable ({exc}); reinstall "
                          "cellbench") from None
    d = data.get("derived")
    if not isinstance(d, dict):
        raise ConfigError(f"{DEFAULT_MORPHOLOGY}: packaged morphology file has no 'derived' section; reinstall "
                          "cellbench")
    return json.loads(json.dumps(d))


def save_morphology(params: dict, path: str | os.PathLike) -> None:
    """Write ``params`` (from :func:`measure_folder`) as indented JSON, atomically."""
    from ..fs import atomic_write

    _check(params, str(path))
    atomic_write(Path(path), json.dumps(params, indent=1, sort_keys=True) + "\n")


#: Features the scene sampler needs per white-cell class (``load_morphology`` checks them).
REQUIRED_WBC = ("cell_area", "nc_ratio", "nuc_solidity", "nuc_eccentricity", "nuc_offset", "chrom_fine",
                "chrom_coarse", "cyt_granularity", "rbc_cover", "rbc_diameter")


def _check(params: dict, source: str) -> dict:
    def bad(msg: str) -> ConfigError:
        return ConfigError(f"{source}: {msg}; re-measure it with `cellbench simulate measure --real DIR --out FILE`")

    if not isinstance(params, dict):
        raise bad("not a JSON object")
    if params.get("version") not in READABLE_VERSIONS:
        raise bad(f"'version' must be one of {READABLE_VERSIONS}, got {params.get('version')!r}")
    classes = params.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise bad("missing key 'classes' (an object with one entry per class)")
    for cls, c in classes.items():
        if cls not in CLASSES:
            raise bad(f"unknown class {cls!r} in 'classes' (known: {', '.join(CLASSES)})")
        need = ("plt_area", "rbc_cover") if cls == "platelet" else REQUIRED_WBC
        for k in need:
            s = c.get(k) if isinstance(c, dict) else None
            if not isinstance(s, dict) or not all(
                isinstance(s.get(q), int | float) and math.isfinite(s.get(q)) for q in ("mean", "sd")
            ):
                raise bad(f"class {cls!r}: missing or bad key {k!r} (needs numbers 'mean' and 'sd')")
        if isinstance(c, dict) and c.get("copula") is not None:
            _check_copula(c["copula"], f"classes.{cls}.copula", bad)
    if params["version"] >= 2:
        _check_derived(params.get("derived"), bad)
    if params.get("ambiguity") is not None:
        _check_ambiguity(params["ambiguity"], bad)
    return params


def soft_label_error(width: float) -> float:
    """The share of borderline cells whose label disagrees with the nearer class, for a uniform ``t`` and
    a labelling border ``1 / (1 + exp(-(t - 1/2) / width))``: ``2 w ln(2 / (1 + exp(-1 / (2 w))))``
    (``E[min(p, 1 - p)]``; 0 for a hard border)."""
    if width <= 0:
        return 0.0
    return 2.0 * width * math.log(2.0 / (1.0 + math.exp(-0.5 / width)))


def ambiguity_from_confusion(confusion, classes: list[str], *, source: str = "",
                             label_width: float | None = None, ambiguous_fraction: float = 1.0) -> dict:
    """The ``ambiguity`` section from a real classifier's confusion on real test images.

    Real classes have borders that blur (band vs segmented neutrophil, ig vs monocyte, large
    lymphocyte vs monocyte); a classifier trained and tested on real labelled cells errs on them.
    The scene sampler draws a cell of class ``a`` as *borderline* with probability ``rates[a]``: its
    morphology and stains lie at a uniformly drawn fraction ``t`` of the way from ``a`` to a
    confuser ``b`` (drawn by ``confusers[a]``), and it keeps its label ``a``. A classifier calls
    such a cell ``b`` about when ``t > 1/2``, i.e. half the time, so ``rates[a]`` is twice the
    off-diagonal share of row ``a`` and the simulated error rate matches the real one (attributing
    every real error to ambiguity: the real classifier's own error is part of it).

    ``ambiguous_fraction`` f in (0, 1] attributes only the share f of the real errors to ambiguity (the rest
    to the real classifier's own mistakes) and multiplies every rate by f. One real classifier on a few hundred
    real test cells cannot tell the two apart; the packaged file takes f = 1/2, at which the benchmark's
    classifier errs on simulated cells about as often as the real one on real cells and a classifier trained on
    simulated cells still transfers to real ones (the figures for 1/2, 3/4 and 1: docs/simulator.md, "Borderline
    cells").

    With ``label_width`` w the borderline cells are labelled as an expert would (the nearer class, with a
    soft border, :func:`cellbench.sim.scene._borderline`): a classifier that reads ``t`` then errs only on
    the share :func:`soft_label_error` of them whose label went the other way, so the rate is the
    off-diagonal share divided by that (capped at 1).

    ``confusion[i][j]``: real test cells of class ``classes[i]`` predicted ``classes[j]``.
    """
    cm = np.asarray(confusion, dtype=float)
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion of shape {cm.shape} for {len(classes)} classes")
    per_cell = 0.5 if label_width is None else soft_label_error(label_width)  # error share of a borderline cell
    if per_cell <= 0:
        raise ValueError("label_width 0 (a hard border) leaves no labelling errors to match; use a width > 0")
    f = float(ambiguous_fraction)
    if not 0.0 < f <= 1.0:
        raise ValueError(f"ambiguous_fraction must lie in (0, 1], got {ambiguous_fraction!r}")
    rates, confusers = {}, {}
    for i, a in enumerate(classes):
        n = cm[i].sum()
        off = {b: float(cm[i, j]) for j, b in enumerate(classes) if j != i and cm[i, j] > 0 and b != "platelet"}
        if a == "platelet" or n <= 0 or not off:
            continue
        rates[a] = round(min(1.0, f * sum(off.values()) / n / per_cell), 4)
        total = sum(off.values())
        confusers[a] = {b: round(v / total, 4) for b, v in off.items()}
    how = ("twice the off-diagonal share of each class's row of a real classifier's confusion on real test "
           "images (cellbench.sim.morphology.ambiguity_from_confusion)" if label_width is None else
           f"the off-diagonal share of each class's row of a real classifier's confusion on real test images "
           f"divided by the soft labelling border's error share {soft_label_error(label_width):.4f} (label_width "
           f"{label_width}; cellbench.sim.morphology.ambiguity_from_confusion)")
    if f < 1.0:
        how += f", times the share {f:g} of the real errors attributed to ambiguity (ambiguous_fraction)"
    out = {"rates": rates, "confusers": confusers, "how": how + (f"; {source}" if source else "")}
    if label_width is not None:
        out["label_width"] = float(label_width)
    if f < 1.0:
        out["ambiguous_fraction"] = f
    return out


def _check_copula(cop, where: str, bad) -> None:
    """``copula``: ``features`` (names of :data:`COPULA_FEATURES`, no repeats) and ``corr``, a symmetric
    positive-definite matrix with a unit diagonal, one row and column per feature."""
    if not isinstance(cop, dict) or not isinstance(cop.get("features"), list) or not isinstance(cop.get("corr"), list):
        raise bad(f"'{where}' needs a list 'features' and a matrix 'corr'")
    f = cop["features"]
    if not f or len(set(f)) != len(f) or any(x not in COPULA_FEATURES for x in f):
        raise bad(f"'{where}.features' must be distinct names of {', '.join(COPULA_FEATURES)}, got {f!r}")
    try:
        c = np.array(cop["corr"], dtype=np.float64)
    except (TypeError, ValueError):
        c = np.zeros(0)
    if c.shape != (len(f), len(f)) or not np.isfinite(c).all():
        raise bad(f"'{where}.corr' must be a {len(f)}x{len(f)} matrix of finite numbers")
    if not np.allclose(c, c.T, atol=1e-6) or not np.allclose(np.diag(c), 1.0, atol=1e-6):
        raise bad(f"'{where}.corr' must be symmetric with a unit diagonal (a correlation matrix)")
    try:
        np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        raise bad(f"'{where}.corr' is not positive definite") from None


def _check_ambiguity(a, bad) -> None:
    """``ambiguity``: ``rates`` (class -> probability in [0, 1]), ``confusers`` (class -> {class: weight >
    0}), ``how`` (provenance text); white-cell classes only (a platelet has no nucleus to blend); optional
    ``label_width``, ``ambiguous_fraction`` and ``t_range``."""
    if not isinstance(a, dict) or not isinstance(a.get("rates"), dict) or not isinstance(a.get("confusers"), dict):
        raise bad("'ambiguity' needs objects 'rates' and 'confusers'")
    if not isinstance(a.get("how"), str):
        raise bad("'ambiguity.how' missing (where the rates come from)")
    w = a.get("label_width")
    if w is not None and (not isinstance(w, int | float) or isinstance(w, bool) or not 0 <= w <= 1):
        raise bad(f"'ambiguity.label_width' must be a number in [0, 1] (the soft labelling border), got {w!r}")
    tr = a.get("t_range")
    if tr is not None and not (isinstance(tr, list) and len(tr) == 2
                               and all(isinstance(v, int | float) and not isinstance(v, bool) for v in tr)
                               and 0 <= tr[0] <= tr[1] <= 1):
        raise bad(f"'ambiguity.t_range' must be [lo, hi] with 0 <= lo <= hi <= 1 (where borderline cells lie "
                  f"between their class and the confuser), got {tr!r}")
    f = a.get("ambiguous_fraction")
    if f is not None and (not isinstance(f, int | float) or isinstance(f, bool) or not 0 < f <= 1):
        raise bad(f"'ambiguity.ambiguous_fraction' must be a number in (0, 1] (the share of the real errors "
                  f"attributed to ambiguity), got {f!r}")
    wbc = [c for c in CLASSES if c != "platelet"]
    for cls, r in a["rates"].items():
        if cls not in wbc or not isinstance(r, int | float) or isinstance(r, bool) or not 0 <= r <= 1:
            raise bad(f"'ambiguity.rates.{cls}': a white-cell class and a probability in [0, 1] expected")
        conf = a["confusers"].get(cls)
        if r > 0 and (not isinstance(conf, dict) or not conf):
            raise bad(f"'ambiguity.confusers.{cls}' missing (the classes its borderline cells lean to)")
        for b, w in (conf or {}).items():
            if b not in wbc or b == cls or not isinstance(w, int | float) or isinstance(w, bool) or not w > 0:
                raise bad(f"'ambiguity.confusers.{cls}.{b}': another white-cell class and a positive weight expected")


def _check_derived(d, bad) -> None:
    """``derived``: ``global`` (every name of :data:`DERIVED_GLOBAL`), ``classes`` (per white-cell
    class, names of :data:`DERIVED_CLASS`), ``how`` (name -> provenance text); finite numbers or
    lists of them."""

    def num(v) -> bool:
        if isinstance(v, list):
            return bool(v) and all(num(x) for x in v)
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    if not isinstance(d, dict):
        raise bad("missing key 'derived' (version 2: the scene generator's rendering corrections)")
    g, c, how = d.get("global"), d.get("classes"), d.get("how")
    if not isinstance(g, dict) or not isinstance(c, dict) or not isinstance(how, dict):
        raise bad("'derived' needs objects 'global', 'classes' and 'how'")
    for k in DERIVED_GLOBAL:
        if not num(g.get(k)):
            raise bad(f"'derived.global.{k}' missing or not a finite number")
        if not isinstance(how.get(k), str):
            raise bad(f"'derived.how.{k}' missing (where the value comes from)")
    for cls, entry in c.items():
        if cls not in CLASSES or not isinstance(entry, dict):
            raise bad(f"'derived.classes': unknown class {cls!r} or not an object")
        for k, v in entry.items():
            if k not in DERIVED_CLASS or not num(v):
                raise bad(f"'derived.classes.{cls}.{k}': unknown name or not a finite number "
                          f"(known: {', '.join(DERIVED_CLASS)})")
            if not isinstance(how.get(k), str):
                raise bad(f"'derived.how.{k}' missing (where the value comes from)")
            if k == "cyt_factor_sd" and (not isinstance(v, list) or len(v) != len(CYT_FACTOR_NAMES) or min(v) < 0):
                raise bad(f"'derived.classes.{cls}.cyt_factor_sd' must be {len(CYT_FACTOR_NAMES)} sigmas >= 0 "
                          f"({', '.join(CYT_FACTOR_NAMES)}), got {v!r}")


def load_morphology(path: str | os.PathLike | None = None) -> dict:
    """Read morphology parameters (``None``: the packaged :data:`DEFAULT_MORPHOLOGY`).

    Raises
    ------
    ConfigError
        Unreadable file, invalid JSON, wrong version, or a missing/bad key (the message names
        the file and the key).
    """
    p = Path(path) if path is not None else DEFAULT_MORPHOLOGY
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read morphology file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not valid JSON ({exc}); re-measure it with `cellbench simulate measure`") from None
    data = _check(data, str(p))
    if data["version"] < 2:  # measurements only: the packaged rendering corrections
        data = dict(data, derived=packaged_derived())
    return data
