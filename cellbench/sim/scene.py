"""Parametric scenes: a stained blood-smear field with one centred cell of a PBC class.

A scene holds absorber amounts (concentration times thickness, in OD units at each absorber's
peak; order :data:`cellbench.sim.spectra.ABSORBERS`) on a pixel grid of about 0.1 um per pixel
(a red cell is about 75 px across, as in CellaVision / PBC images), in two depth layers:

* layer 0 (depth 0 um): plasma, red cells, platelets, white-cell cytoplasm;
* layer 1 (depth :data:`NUCLEUS_DEPTH_UM`): nucleus chromatin;
* layer 2 (depth :data:`GRANULE_DEPTH_UM`): cytoplasmic granules, on top of the flattened cell.

Systems focused at different depths therefore render chromatin and granule texture with
different contrast (see :func:`cellbench.sim.system.render`).

The ground-truth mask (labels of :mod:`cellbench.data.masks`) comes from the same geometry.

Morphology per class (sizes in px at 0.1 um/px; distributions documented in ``_CLASS``):
neutrophil (2-5 lobes joined by thin strands, or a band form; pale lilac cytoplasm with fine
granules), eosinophil (usually bilobed; cytoplasm packed with large orange-red eosin granules),
basophil (dark purple-black granules over nucleus and cytoplasm), lymphocyte (round dense nucleus,
thin rim of sky-blue cytoplasm; small and large forms), monocyte (large, folded/kidney nucleus with
lacy chromatin, grey-blue cytoplasm, vacuoles), immature granulocyte (eccentric round-to-kidney
nucleus with finer chromatin, bluish-pink cytoplasm, azurophilic granules), erythroblast (round
very dense nucleus, basophilic to pink cytoplasm), platelet (a small granular fragment at the
centre; no white cell). Background: overlapping biconcave red cells with central pallor,
scattered platelets, plasma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from ..data import masks as M
from .spectra import AZURE_B, AZURE_EOSIN, EOSIN, HAEMOGLOBIN, METHYLENE_BLUE

NUCLEUS_DEPTH_UM = 0.25
GRANULE_DEPTH_UM = 0.35
LAYER_DEPTHS_UM = (0.0, NUCLEUS_DEPTH_UM, GRANULE_DEPTH_UM)
#: Log-normal sigma of the per-slide amount of each absorber (staining variability between slides).
STAIN_VARIATION = 0.08


def _c(eo=0.0, mb=0.0, azb=0.0, aze=0.0, hb=0.0) -> np.ndarray:
    v = np.zeros(5, dtype=np.float32)
    v[[EOSIN, METHYLENE_BLUE, AZURE_B, AZURE_EOSIN, HAEMOGLOBIN]] = eo, mb, azb, aze, hb
    return v


#: Region stains (OD units at each absorber's peak). Calibrated against PBC (docs/simulator.md).
STAINS: dict[str, np.ndarray] = {
    "plasma": _c(eo=0.012, mb=0.004, aze=0.004),
    "red_cell": _c(eo=0.123, mb=0.120, azb=0.154, aze=0.026, hb=0.381),
    "platelet": _c(eo=0.05, mb=0.10, azb=0.30, aze=0.90, hb=0.10),
    "platelet_hyalomere": _c(eo=0.06, mb=0.12, azb=0.08, aze=0.10),
}

# Per class: cell radius (mean, sd) px; nucleus kind and relative size; cytoplasm, nucleus and
# granule stains; granule radius px and packing (fraction of cytoplasm covered); chromatin texture
# (fine-scale contrast, clumping); vacuoles.
_CLASS: dict[str, dict] = {
    "neutrophil": dict(
        radius=(62, 4),
        nucleus="lobed",
        nuc_size=0.24,
        cyt=_c(eo=0.202, mb=0.097, azb=0.135, aze=0.178, hb=0.212),
        nuc=_c(eo=0.447, mb=0.255, azb=0.451, aze=1.091, hb=0.430),
        gran=_c(eo=0.02, azb=0.06, aze=0.16),
        gran_r=1.3,
        gran_cover=0.35,
        chrom=(0.35, 0.5),
    ),
    "eosinophil": dict(
        radius=(66, 4),
        nucleus="bilobed",
        nuc_size=0.28,
        cyt=_c(eo=0.072, mb=0.182, azb=0.231, aze=0.137, hb=0.252),
        nuc=_c(eo=0.369, mb=0.211, azb=0.377, aze=0.929, hb=0.384),
        gran=_c(eo=0.75, azb=0.02, aze=0.10, mb=0.01),
        gran_r=3.6,
        gran_cover=0.75,
        chrom=(0.35, 0.5),
    ),
    "basophil": dict(
        radius=(58, 4),
        nucleus="bilobed",
        nuc_size=0.30,
        cyt=_c(eo=0.206, aze=0.053, hb=0.160),
        nuc=_c(eo=0.565, aze=0.656, hb=0.884),
        gran=_c(eo=0.03, mb=0.35, azb=0.75, aze=1.05),
        gran_r=4.0,
        gran_cover=0.55,
        chrom=(0.3, 0.4),
        gran_over_nucleus=True,
    ),
    "lymphocyte": dict(
        radius=(46, 6),
        nucleus="round",
        nuc_size=0.80,
        cyt=_c(eo=0.273, mb=0.331, azb=0.304, aze=0.433, hb=0.199),
        nuc=_c(eo=0.389, mb=0.215, azb=0.401, aze=1.133, hb=0.513),
        gran=None,
        chrom=(0.3, 0.7),
    ),
    "monocyte": dict(
        radius=(80, 6),
        nucleus="kidney",
        nuc_size=0.55,
        cyt=_c(eo=0.213, mb=0.209, azb=0.228, aze=0.345, hb=0.156),
        nuc=_c(eo=0.400, mb=0.157, azb=0.300, aze=0.898, hb=0.330),
        gran=_c(azb=0.04, aze=0.10),
        gran_r=1.2,
        gran_cover=0.15,
        chrom=(0.5, 0.3),
        vacuoles=(1, 6),
    ),
    "ig": dict(
        radius=(70, 6),
        nucleus="eccentric",
        nuc_size=0.55,
        cyt=_c(eo=0.261, mb=0.191, azb=0.223, aze=0.351, hb=0.211),
        nuc=_c(eo=0.395, mb=0.214, azb=0.380, aze=0.939, hb=0.382),
        gran=_c(eo=0.02, azb=0.15, aze=0.35),
        gran_r=1.8,
        gran_cover=0.30,
        chrom=(0.25, 0.3),
    ),
    "erythroblast": dict(
        radius=(48, 6),
        nucleus="round",
        nuc_size=0.55,
        cyt=_c(eo=0.138, mb=0.214, azb=0.172, aze=0.063, hb=0.249),
        nuc=_c(eo=0.289, mb=0.246, azb=0.441, aze=1.210, hb=0.606),
        gran=None,
        chrom=(0.3, 0.8),
    ),
}


@dataclass
class Scene:
    """One field: ``parts`` per depth layer, ``depths_um``, ``mask`` ``(H, W)`` uint8 labels, ``cls``.

    A part is either a dense ``(5, H, W)`` float32 array of absorber amounts or a factored
    ``(stain (5,), map (H, W))`` pair (amounts = stain x map), which lets the renderer blur one map
    instead of five absorber planes. :attr:`layers` gives the dense ``(Z, 5, H, W)`` array.
    """

    parts: list
    depths_um: tuple[float, ...]
    mask: np.ndarray
    cls: str

    @property
    def layers(self) -> np.ndarray:
        return np.stack(
            [p if isinstance(p, np.ndarray) else p[0][:, None, None] * p[1][None] for p in self.parts]
        ).astype(np.float32)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``sigma`` px."""
    if sigma >= 3:  # cheaper: filter a coarser field and upsample
        f = max(1, int(sigma // 2))
        small = rng.standard_normal((size // f + 2, size // f + 2), dtype=np.float32)
        small = ndimage.gaussian_filter(small, sigma / f, mode="wrap")
        n = ndimage.zoom(small, f, order=1)[:size, :size]
    else:
        n = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma, mode="wrap")
    s = n.std()
    return n / (s if s > 0 else 1.0)


def _window(size: int, cy: float, cx: float, r: float):
    y0, y1 = max(0, int(cy - r - 2)), min(size, int(cy + r + 3))
    x0, x1 = max(0, int(cx - r - 2)), min(size, int(cx + r + 3))
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = _grid(size)
    return (slice(y0, y1), slice(x0, x1)), yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx


def _soft(sd: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (px, negative inside)."""
    return np.clip(0.5 - sd / edge, 0.0, 1.0)


def _blob(size, cy, cx, r, rng, wobble=0.04, aspect=1.0, angle=0.0):
    """Coverage of a wobbly ellipse: (slices, alpha) or None when outside the canvas."""
    w = _window(size, cy, cx, r * max(aspect, 1.0) * (1 + 3 * wobble))
    if w is None:
        return None
    sl, dy, dx = w
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = ca * dx + sa * dy, (-sa * dx + ca * dy) * aspect
    rho = np.sqrt(u * u + v * v)
    th = np.arctan2(v, u)
    ph = rng.uniform(0, 2 * math.pi, 3)
    rr = r * (
        1 + wobble * (np.cos(2 * th + ph[0]) + 0.6 * np.cos(3 * th + ph[1]) + 0.4 * np.cos(5 * th + ph[2]))
    )
    return sl, _soft(rho - rr, 1.2), rho / rr


def _paint_max(canvas, blob):
    if blob is not None:
        sl, a = blob[0], blob[1]
        np.maximum(canvas[sl], a, out=canvas[sl])


def _capsule(size, p, q, width):
    """Coverage of a segment p-q (y, x) thickened to ``width`` px."""
    r = width / 2 + 1
    cy, cx = (p[0] + q[0]) / 2, (p[1] + q[1]) / 2
    half = math.hypot(q[0] - p[0], q[1] - p[1]) / 2 + r
    w = _window(size, cy, cx, half)
    if w is None:
        return None
    sl, dy, dx = w
    vy, vx = q[0] - p[0], q[1] - p[1]
    ll = vy * vy + vx * vx + 1e-6
    py, px = dy + cy - p[0], dx + cx - p[1]
    t = np.clip((py * vy + px * vx) / ll, 0, 1)
    d = np.hypot(py - t * vy, px - t * vx)
    return sl, _soft(d - width / 2, 1.0)


def _granules(rng, size, region, radius, cover):
    """Granule field (peak ~1) from a Poisson point process inside ``region`` (coverage > 0.5)."""
    ys, xs = np.nonzero(region > 0.5)
    if len(ys) == 0:
        return np.zeros((size, size), np.float32)
    n = rng.poisson(cover * len(ys) / (math.pi * radius * radius))
    idx = rng.integers(0, len(ys), n)
    pts = np.zeros((size, size), np.float32)
    jy = rng.uniform(-0.5, 0.5, n)
    jx = rng.uniform(-0.5, 0.5, n)
    np.add.at(
        pts,
        (
            np.clip(np.round(ys[idx] + jy).astype(int), 0, size - 1),
            np.clip(np.round(xs[idx] + jx).astype(int), 0, size - 1),
        ),
        1.0,
    )
    sigma = radius / 1.4
    g = ndimage.gaussian_filter(pts, sigma, mode="constant", truncate=3.0) * (2 * math.pi * sigma * sigma)
    return np.minimum(g, 1.6)


def _red_cells(rng, size, layer0, mask, keep_out: tuple[float, float, float] | None, density: float = 1.0):
    """Biconcave red cells with central pallor: thickness 1 at the rim, ~0.45 in the centre."""
    ext = size + 80
    n = rng.poisson(10.5 * density * (ext / 336.0) ** 2)
    thick = np.zeros((size, size), np.float32)
    for _ in range(n):
        cy, cx = rng.uniform(-40, size + 40, 2)
        r = max(25.0, rng.normal(37.0, 2.5))
        if keep_out is not None and math.hypot(cy - keep_out[0], cx - keep_out[1]) < keep_out[2] + 0.8 * r:
            continue
        b = _blob(
            size, cy, cx, r, rng, wobble=0.02, aspect=rng.uniform(1.0, 1.12), angle=rng.uniform(0, math.pi)
        )
        if b is None:
            continue
        sl, a, rho = b
        pallor = rng.uniform(0.45, 0.65)
        prof = (1 - pallor * np.exp(-((rho / 0.42) ** 2))) * (1 - 0.25 * rho**8)
        thick[sl] += a * prof * rng.uniform(0.9, 1.1)
    layer0 += thick[None] * STAINS["red_cell"][:, None, None]
    mask[thick > 0.3] = M.RED_CELL


def _platelet(rng, size, cy, cx, r, layer0, mask):
    b = _blob(size, cy, cx, r, rng, wobble=0.12, aspect=rng.uniform(1.0, 1.3), angle=rng.uniform(0, math.pi))
    if b is None:
        return
    sl, a, _ = b
    shp = a.shape
    tex = ndimage.gaussian_filter(rng.standard_normal(shp, dtype=np.float32), 1.5, mode="wrap")
    tex = np.clip(0.55 + 0.9 * tex / max(float(tex.std()), 1e-6), 0, 2)
    layer0[:, sl[0], sl[1]] += a * (
        STAINS["platelet_hyalomere"][:, None, None]
        + tex * STAINS["platelet"][:, None, None] * np.clip(1.2 - 0.6 * (b[2]), 0, 1)
    )
    mask[sl][a > 0.5] = M.PLATELET


def _nucleus(rng, size, kind, cy, cx, rc, nuc_size):
    """Nucleus coverage ``(H, W)`` for a cell of radius ``rc`` centred at (cy, cx)."""
    nucl = np.zeros((size, size), np.float32)
    rn = rc * math.sqrt(nuc_size)
    if kind == "lobed" and rng.uniform() < 0.2:
        kind = "band"
    if kind in ("lobed", "bilobed"):
        nl = 2 if kind == "bilobed" else int(rng.choice([2, 3, 4, 5], p=[0.12, 0.38, 0.36, 0.14]))
        arc_r = rc * rng.uniform(0.38, 0.5)
        start = rng.uniform(0, 2 * math.pi)
        span = rng.uniform(0.9, 1.5) * math.pi * (nl - 1) / max(nl - 1, 1) * (0.7 if nl == 2 else 1.0)
        lobe_r = rc * (0.30 if nl == 2 else 0.26)
        pts = []
        for j in range(nl):
            t = start + span * (j / max(nl - 1, 1))
            p = (cy + arc_r * math.sin(t) + rng.normal(0, 2), cx + arc_r * math.cos(t) + rng.normal(0, 2))
            pts.append(p)
            _paint_max(
                nucl,
                _blob(size, p[0], p[1], lobe_r * rng.uniform(0.85, 1.1), rng, 0.06, rng.uniform(1.1, 1.5), t),
            )
        for p, q in zip(pts[:-1], pts[1:], strict=False):
            _paint_max(nucl, _capsule(size, p, q, rng.uniform(2.0, 4.0)))
    elif kind == "band":
        arc_r = rc * rng.uniform(0.42, 0.52)
        start, span = rng.uniform(0, 2 * math.pi), rng.uniform(0.9, 1.4) * math.pi
        wid = rc * rng.uniform(0.17, 0.22)
        for j in range(14):
            t = start + span * j / 13
            _paint_max(nucl, _blob(size, cy + arc_r * math.sin(t), cx + arc_r * math.cos(t), wid, rng, 0.03))
    elif kind in ("kidney", "eccentric"):
        off = rc * (0.12 if kind == "kidney" else rng.uniform(0.15, 0.3))
        t = rng.uniform(0, 2 * math.pi)
        ny, nx = cy + off * math.sin(t), cx + off * math.cos(t)
        b = _blob(size, ny, nx, rn, rng, 0.06, rng.uniform(1.0, 1.25), rng.uniform(0, math.pi))
        _paint_max(nucl, b)
        if kind == "kidney" or rng.uniform() < 0.5:  # indentation (kidney / metamyelocyte)
            dent = _blob(
                size,
                ny - rn * 0.95 * math.sin(t),
                nx - rn * 0.95 * math.cos(t),
                rn * rng.uniform(0.45, 0.65),
                rng,
                0.05,
            )
            if dent is not None:
                nucl[dent[0]] *= 1 - dent[1]
    else:  # round
        off = rc * rng.uniform(0.0, 0.12)
        t = rng.uniform(0, 2 * math.pi)
        _paint_max(
            nucl,
            _blob(
                size,
                cy + off * math.sin(t),
                cx + off * math.cos(t),
                rn,
                rng,
                0.04,
                rng.uniform(1.0, 1.1),
                rng.uniform(0, math.pi),
            ),
        )
    return nucl


def make_scene(cls: str, rng: np.random.Generator, size: int = 256) -> Scene:
    """Draw one scene of class ``cls`` (a key of :data:`cellbench.data.classes.CLASSES`).

    Parameters
    ----------
    cls:
        PBC class; the white cell (or, for ``platelet``, a platelet) is near the centre.
    rng:
        The only source of randomness.
    size:
        Square canvas in px at 0.1 um/px (256 by default).
    """
    layer0 = np.zeros((5, size, size), np.float32)
    mask = np.zeros((size, size), np.uint8)
    stain = np.exp(rng.normal(0, STAIN_VARIATION, 5)).astype(np.float32)  # slide-to-slide staining variation
    layer0 += STAINS["plasma"][:, None, None]
    c0 = size / 2
    cy, cx = c0 + rng.normal(0, 4), c0 + rng.normal(0, 4)
    if cls == "platelet":
        _red_cells(rng, size, layer0, mask, (cy, cx, 14.0), density=1.3)
        for _ in range(rng.poisson(0.6)):
            _platelet(rng, size, *rng.uniform(0, size, 2), rng.uniform(7, 11), layer0, mask)
        _platelet(rng, size, cy, cx, rng.uniform(10, 16), layer0, mask)
        empty = (np.zeros(5, np.float32), np.zeros((size, size), np.float32))
        return Scene([layer0 * stain[:, None, None], empty, empty], LAYER_DEPTHS_UM, mask, cls)
    p = _CLASS[cls]
    rc = max(30.0, rng.normal(*p["radius"]))
    if cls == "lymphocyte" and rng.uniform() < 0.25:  # large lymphocyte
        rc *= 1.25
    _red_cells(rng, size, layer0, mask, (cy, cx, rc))
    for _ in range(rng.poisson(0.5)):
        _platelet(rng, size, *rng.uniform(0, size, 2), rng.uniform(7, 11), layer0, mask)
    cell = _blob(size, cy, cx, rc, rng, 0.025, rng.uniform(1.0, 1.08), rng.uniform(0, math.pi))
    cell_a = np.zeros((size, size), np.float32)
    sl, a, rho = cell
    cell_a[sl] = a
    dome = np.zeros((size, size), np.float32)
    dome[sl] = a * (1.0 - 0.35 * np.clip(rho, 0, 1) ** 2)
    nuc_size = p["nuc_size"]
    if cls == "lymphocyte":
        nuc_size = nuc_size * (0.75 if rc > 50 else 1.0)
    nucl = _nucleus(rng, size, p["nucleus"], cy, cx, rc, nuc_size) * cell_a
    fine = _smooth_noise(rng, size, 1.2)
    coarse = _smooth_noise(rng, size, 3.5)
    cyt_amount = dome * (1 - 0.75 * nucl) * (1 + 0.12 * coarse)
    for lo, hi in [p.get("vacuoles", (0, 0))]:
        for _ in range(int(rng.integers(lo, hi + 1)) if hi else 0):
            ang, dist = rng.uniform(0, 2 * math.pi), rc * rng.uniform(0.5, 0.85)
            v = _blob(
                size, cy + dist * math.sin(ang), cx + dist * math.cos(ang), rng.uniform(2.5, 6), rng, 0.05
            )
            if v is not None:
                cyt_amount[v[0]] *= 1 - 0.85 * v[1]
    # red cells under the white cell are hidden (it lies on top and displaces them)
    layer0 *= (1 - cell_a)[None]
    layer0 += cell_a[None] * STAINS["plasma"][:, None, None]
    layer0 += cyt_amount[None] * p["cyt"][:, None, None]
    fine_c, clump = p["chrom"]
    chrom = np.clip(1 + fine_c * fine + clump * 0.5 * coarse, 0.15, 2.5)
    part1 = (p["nuc"] * stain, (nucl * chrom).astype(np.float32))
    part2 = (np.zeros(5, np.float32), np.zeros((size, size), np.float32))
    mask[cell_a > 0.5] = M.CYTOPLASM
    mask[nucl > 0.5] = M.NUCLEUS
    if p.get("gran") is not None:
        region = cell_a if p.get("gran_over_nucleus") else cell_a * (1 - nucl)
        g = _granules(rng, size, region * (dome > 0.2), p["gran_r"], p["gran_cover"]) * cell_a
        part2 = (p["gran"] * stain, g.astype(np.float32))
        if p["gran_r"] >= 3.0 or cls == "ig":
            mask[(g > 0.5) & (cell_a > 0.5)] = M.GRANULES
        else:  # fine neutrophil/monocyte granules: label only the densest spots
            mask[(g > 0.8) & (cell_a > 0.5) & (nucl < 0.5)] = M.GRANULES
    return Scene([layer0 * stain[:, None, None], part1, part2], LAYER_DEPTHS_UM, mask, cls)
