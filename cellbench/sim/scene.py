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

Morphology is drawn from distributions **measured on real images** (:mod:`cellbench.sim.morphology`; the
packaged ``params/morphology-pbc-v2.json`` was measured on the PBC DM96 train split): cell area,
nucleus/cell ratio and offset, lobe count (separate lobes joined by strands, touching lobes, or band
forms), eccentricity and indentation (kidney / folded nuclei), chromatin texture amplitude, per-cell
cytoplasm amount, vacuoles, red-cell size and packing, field platelets and, in the platelet class, the
central platelet's size and single/clumped form. Each quantity is drawn through its measured quantiles
(:func:`_quantile_sample`), so intra-class spread and inter-class overlap are the measured ones; the
cell's shape, texture and cytoplasm-density features are drawn jointly, through the class's measured
Gaussian copula (:func:`_copula_normals`), so that they co-vary as in real cells (a large cell has a low
nucleus/cell ratio). The rendering corrections (what the scene draws per unit of what the measurement
returns, granule size and cover, red-cell pallor depth and spacing) are data too: the file's ``derived``
section, with each value's provenance (:func:`_corrections`).
Region colours (``STAINS``, ``_CLASS``) are the colour calibration against PBC (docs/simulator.md).
Lab variation: every scene lies on a :class:`Slide` (staining concentrations, time and buffer pH,
smear thickness, focus), shared by all items of that slide and by both images of a pair
(:mod:`cellbench.sim.pairs`).
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
#: Directions of the per-cell variation of cytoplasm composition, in log absorber amounts (order
#: eosin, methylene blue, azure B, azure B-eosin, haemoglobin): the amount of cytoplasm (all absorbers)
#: and its eosinophilia (eosin and the complex up, the blue dyes down: pink versus blue cytoplasm, the
#: RNA content of a maturing cell). A class's ``cyt_factor_sd`` (the morphology file's ``derived``
#: section) holds one sigma per direction.
CYT_FACTORS = np.array([[1.0, 1.0, 1.0, 1.0, 1.0],
                        [1.0, -1.0, -1.0, 0.5, 0.0]])


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

# Per class: cell radius (mean, sd) px (used when the morphology file lacks ``cell_area``); nucleus
# kind and relative size; cytoplasm, nucleus and granule stains (colour calibration); defaults of
# chromatin texture (fine, clumping); vacuoles. Granule size and cover, and the class's rendering
# corrections, come from the morphology file's ``derived`` section (:func:`_corrections`).
_CLASS: dict[str, dict] = {
    "neutrophil": dict(
        radius=(62, 4),
        nucleus="lobed",
        nuc_size=0.24,
        cyt=_c(eo=0.202, mb=0.097, azb=0.135, aze=0.178, hb=0.212),
        nuc=_c(eo=0.447, mb=0.255, azb=0.451, aze=1.091, hb=0.430),
        gran=_c(eo=0.02, azb=0.06, aze=0.16),
        chrom=(0.35, 0.5),
    ),
    "eosinophil": dict(
        radius=(66, 4),
        nucleus="bilobed",
        nuc_size=0.28,
        cyt=_c(eo=0.072, mb=0.182, azb=0.231, aze=0.137, hb=0.252),
        nuc=_c(eo=0.369, mb=0.211, azb=0.377, aze=0.929, hb=0.384),
        gran=_c(eo=0.75, azb=0.02, aze=0.10, mb=0.01),
        chrom=(0.35, 0.5),
    ),
    "basophil": dict(
        radius=(58, 4),
        nucleus="bilobed",
        nuc_size=0.30,
        cyt=_c(eo=0.206, aze=0.053, hb=0.160),
        nuc=_c(eo=0.233, mb=0.129, azb=0.241, aze=0.680, hb=0.308),
        gran=_c(eo=0.055, mb=0.221, azb=0.477, aze=0.704, hb=0.110),
        chrom=(0.3, 0.4),
        gran_over_nucleus=True,
    ),
    "lymphocyte": dict(
        radius=(46, 6),
        nucleus="round",
        nuc_size=0.80,
        cyt=_c(eo=0.341, mb=0.414, azb=0.380, aze=0.541, hb=0.249),
        nuc=_c(eo=0.358, mb=0.232, azb=0.485, aze=1.008, hb=0.520),
        gran=None,
        chrom=(0.3, 0.7),
    ),
    "monocyte": dict(
        radius=(80, 6),
        nucleus="kidney",
        nuc_size=0.55,
        cyt=_c(eo=0.214, mb=0.262, azb=0.307, aze=0.431, hb=0.136),
        nuc=_c(eo=0.360, mb=0.169, azb=0.360, aze=0.856, hb=0.330),
        gran=_c(azb=0.04, aze=0.10),
        chrom=(0.5, 0.3),
        vacuoles=(1, 6),
    ),
    "ig": dict(
        radius=(70, 6),
        nucleus="eccentric",
        nuc_size=0.55,
        cyt=_c(eo=0.261, mb=0.191, azb=0.223, aze=0.351, hb=0.211),
        nuc=_c(eo=0.368, mb=0.226, azb=0.426, aze=0.908, hb=0.362),
        gran=_c(eo=0.02, azb=0.15, aze=0.35),
        chrom=(0.25, 0.3),
    ),
    "erythroblast": dict(
        radius=(48, 6),
        nucleus="round",
        nuc_size=0.55,
        cyt=_c(eo=0.489, mb=0.427, azb=0.455, aze=0.357, hb=0.316),
        nuc=_c(eo=0.285, mb=0.291, azb=0.609, aze=1.118, hb=0.683),
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


# -- measured morphology -----------------------------------------------------------------------


@lru_cache(maxsize=1)
def _default_morphology() -> dict:
    from .morphology import load_morphology

    return load_morphology()


def _quantile_sample(stats: dict | None, rng: np.random.Generator, default: float, lo: float = -np.inf,
                     hi: float = np.inf, u: float | None = None) -> float:
    """Draw from a measured distribution: piecewise-linear inverse CDF through its quantiles.

    ``stats`` holds ``q05 q25 q50 q75 q95`` (:func:`cellbench.sim.morphology.summarize`); the tails
    beyond q05 / q95 extend linearly by a quarter of the neighbouring inter-quantile step. Clipped to
    ``[lo, hi]``; ``default`` when the statistic was not measured. ``u``: the uniform to invert (the
    cell's copula draw, :func:`_uniforms`); drawn from ``rng`` when ``None``.
    """
    if u is None:
        u = rng.uniform()
    if not stats or "q50" not in stats:
        return float(np.clip(default, lo, hi))
    q = [stats["q05"], stats["q25"], stats["q50"], stats["q75"], stats["q95"]]
    qs = [q[0] - 0.25 * (q[1] - q[0])] + q + [q[4] + 0.25 * (q[4] - q[3])]
    v = float(np.interp(u, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0], qs))
    return float(np.clip(v, lo, hi))


def _copula_normals(m: dict, rng: np.random.Generator) -> dict[str, float]:
    """One cell's jointly drawn standard normals, by feature, from the class's measured Gaussian copula
    (``m["copula"]``, :func:`cellbench.sim.morphology.copula`): ``z = L e`` with ``L`` the Cholesky factor of
    the correlation matrix and ``e`` i.i.d. N(0, 1). Empty (and nothing drawn) for a class without one."""
    cop = m.get("copula")
    if not cop:
        return {}
    chol = np.linalg.cholesky(np.asarray(cop["corr"], np.float64))
    z = chol @ rng.normal(0.0, 1.0, len(cop["features"]))
    return dict(zip(cop["features"], (float(v) for v in z), strict=True))


def _uniforms(z: dict[str, float]) -> dict[str, float]:
    """``Phi(z)`` by feature: the copula's uniforms for :func:`_quantile_sample`."""
    return {k: 0.5 * math.erfc(-v / math.sqrt(2.0)) for k, v in z.items()}


def _corrections(morph: dict, cls: str) -> tuple[dict, dict]:
    """The rendering corrections (global, this class's) of the morphology file's ``derived`` section
    (:data:`cellbench.sim.morphology.DERIVED_GLOBAL` / ``DERIVED_CLASS``; provenance in
    ``derived.how``); the packaged ones when ``morph`` has none (a hand-built dictionary)."""
    d = morph.get("derived") or _default_morphology()["derived"]
    return d["global"], d["classes"].get(cls, {})


def _lerp(a, b, t: float):
    """``(1 - t) a + t b`` for numbers, sequences and arrays of them, and dictionaries key by key
    (a key that only one side has keeps that side's value); anything else: ``a``."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _lerp(a[k], b[k], t) if k in a and k in b else a.get(k, b.get(k)) for k in {**a, **b}}
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str):
        return a
    if isinstance(a, int | float) and isinstance(b, int | float):
        return (1.0 - t) * a + t * b
    if isinstance(a, list | tuple | np.ndarray) and isinstance(b, list | tuple | np.ndarray) and len(a) == len(b):
        out = (1.0 - t) * np.asarray(a, dtype=np.float64) + t * np.asarray(b, dtype=np.float64)
        return out.astype(np.float32) if isinstance(a, np.ndarray) else type(a)(out.tolist())
    return a


def _borderline(morph: dict, cls: str, rng: np.random.Generator) -> tuple[dict, dict, dict, str, str] | None:
    """A borderline cell of class ``cls`` (the morphology file's ``ambiguity`` section; see
    :func:`cellbench.sim.morphology.ambiguity_from_confusion`): with probability ``rates[cls]``, the
    measured shape statistics, the stains and the rendering corrections at a uniform fraction ``t``
    of the way from ``cls`` to a confuser drawn by ``confusers[cls]`` (uniform on the section's optional
    ``t_range`` [lo, hi], default [0, 1]: ``benchmarks/sim_borderline.py`` draws cells at one ``t``).
    Returns ``(m, p, c, look, label)`` (``look``: the nearer class, for the granule mask; ``label``:
    ``cls``, or with the section's ``label_width`` w the confuser with probability
    ``1 / (1 + exp(-(t - 1/2) / w))``, an expert labelling by the nearer class with a soft border; w = 0:
    the nearer class), or ``None`` for an ordinary cell. Draws from ``rng`` only for classes with a
    positive rate (the other classes' scenes do not change)."""
    amb = morph.get("ambiguity")
    rate = float(amb["rates"].get(cls, 0.0)) if amb else 0.0
    if rate <= 0.0:
        return None
    u, pick, t = rng.uniform(), rng.uniform(), rng.uniform()
    if u >= rate:
        return None
    lo, hi = amb.get("t_range", (0.0, 1.0))  # where on the way to the confuser (default: anywhere)
    t = lo + (hi - lo) * t
    conf = amb["confusers"][cls]
    names = sorted(conf)
    w = np.array([float(conf[k]) for k in names])
    b = names[min(int(np.searchsorted(np.cumsum(w / w.sum()), pick, side="right")), len(names) - 1)]
    ma, mb = morph["classes"].get(cls, {}), morph["classes"].get(b, {})
    m = _lerp({k: v for k, v in ma.items() if k != "copula"}, {k: v for k, v in mb.items() if k != "copula"}, t)
    near = ma if t < 0.5 else mb
    if near.get("copula"):  # the nearer class's joint structure (not interpolated)
        m["copula"] = near["copula"]
    ha, hb = ma.get("lobe_hist") or {"1": 1.0}, mb.get("lobe_hist") or {"1": 1.0}
    m["lobe_hist"] = {k: (1 - t) * float(ha.get(k, 0.0)) + t * float(hb.get(k, 0.0)) for k in sorted({**ha, **hb})}
    pa, pb = _CLASS[cls], _CLASS[b]
    p = _lerp({k: v for k, v in pa.items() if k != "gran"}, {k: v for k, v in pb.items() if k != "gran"}, t)
    p["gran_over_nucleus"] = (pa if t < 0.5 else pb).get("gran_over_nucleus", False)
    g, ca = _corrections(morph, cls)
    _, cb = _corrections(morph, b)
    # what a class without its own value draws, so that every correction is interpolated
    neutral = {"area_gain": 1.0, "nuc_of_dense": 1.0, "chrom_gain": [1.0, 1.0], "cyt_tex_coarse": g["cyt_tex_coarse"]}
    if "cyt_factor_sd" in ca or "cyt_factor_sd" in cb:
        neutral["cyt_factor_sd"] = [0.0] * len(CYT_FACTORS)
    c = _lerp({**neutral, **{k: v for k, v in ca.items() if not k.startswith("gran")}},
              {**neutral, **{k: v for k, v in cb.items() if not k.startswith("gran")}}, t)
    ga, gb = pa.get("gran"), pb.get("gran")
    if ga is not None and gb is not None:
        p["gran"] = _lerp(ga, gb, t)
        c["gran_r"] = _lerp(ca["gran_r"], cb["gran_r"], t)
        c["gran_cover"] = _lerp(ca["gran_cover"], cb["gran_cover"], t)
    elif ga is not None or gb is not None:  # one side has granules: fewer of them, as far as it is from it
        own, cc, share = (ga, ca, 1.0 - t) if ga is not None else (gb, cb, t)
        p["gran"], c["gran_r"], c["gran_cover"] = own, cc["gran_r"], cc["gran_cover"] * share
    else:
        p["gran"] = None
    label = cls
    w = amb.get("label_width")
    if w is not None:  # the logistic 1 / (1 + exp(-z)) as (1 + tanh(z / 2)) / 2: no overflow for small w
        p_b = 0.5 * (1.0 + math.tanh((t - 0.5) / (2.0 * w))) if w > 0 else float(t >= 0.5)
        label = b if rng.uniform() < p_b else cls
    return m, p, c, (cls if t < 0.5 else b), label


def _mean(stats: dict | None, default: float) -> float:
    return float(stats["mean"]) if stats and "mean" in stats else default


# -- lab variation -----------------------------------------------------------------------------


#: Items per slide: item ``i`` of a data set lies on slide ``i // ITEMS_PER_SLIDE`` (pairs.py).
ITEMS_PER_SLIDE = 40


@dataclass(frozen=True)
class Slide:
    """One stained smear: stain multipliers per absorber, smear thickness, focus offset.

    ``stain`` ``(5,)`` multiplies the absorber amounts of every stained structure (order
    :data:`cellbench.sim.spectra.ABSORBERS`; haemoglobin is not a stain, its entry scales red-cell
    haemoglobin content). ``thickness`` scales red-cell packing (thin edge < 1 < thick body);
    ``focus_um`` shifts every layer's depth (the slide's tilt / autofocus residual).
    """

    stain: np.ndarray
    thickness: float = 1.0
    focus_um: float = 0.0

    @staticmethod
    def draw(rng: np.random.Generator) -> Slide:
        """A random slide (the model of docs/simulator.md, 'Lab variation').

        Staining: azure (methylene blue / azure B) and eosin concentrations vary log-normally
        (sigma :data:`STAIN_VARIATION` each), staining time scales both (sigma 0.06), and the buffer
        pH shifts the azure/eosin balance (log ratio, sigma 0.07: higher pH, bluer). The azure-eosin
        complex follows the geometric mean of the two. Haemoglobin varies per slide (sigma 0.04).
        """
        c_az, c_eo, t, hb = rng.normal(0, [STAIN_VARIATION, STAIN_VARIATION, 0.06, 0.04])
        ph = rng.normal(0, 0.07)
        az, eo = t + c_az + ph / 2, t + c_eo - ph / 2
        stain = np.exp([eo, az, az, 0.5 * (az + eo), hb]).astype(np.float32)
        thickness = float(np.exp(rng.normal(0, 0.15)))
        return Slide(stain, thickness, float(rng.normal(0, 0.05)))


# -- red cells, platelets ----------------------------------------------------------------------


def _red_cells(rng, size, layer0, mask, keep_out, *, cover: float, diameter: float, pallor_depth: float,
               hb: float = 1.0, min_separation: float = 0.7):
    """Biconcave red cells with central pallor, packed until they cover the measured fraction.

    Cells are dropped at random positions (a red cell rarely lies more than a little over another
    in a smear's monolayer: a new cell whose centre is closer than ``min_separation (r_i + r_j)`` to
    another's is rejected) until the disc cover of the field outside the white cell reaches ``cover`` (the
    measured packing) or no place is left.
    """
    ext = 40
    r0 = diameter / 2
    thick = np.zeros((size, size), np.float32)
    step = 8
    gy, gx = np.mgrid[step // 2 : size : step, step // 2 : size : step].astype(np.float32)
    covered = np.zeros(gy.shape, bool)
    free = np.ones(gy.shape, bool)
    if keep_out is not None:
        free = np.hypot(gy - keep_out[0], gx - keep_out[1]) > keep_out[2]
    n_free = max(int(free.sum()), 1)
    centres: list[tuple[float, float, float]] = []
    tries = 0
    while (covered & free).sum() < cover * n_free and tries < 400:
        tries += 1
        cy, cx = rng.uniform(-ext, size + ext, 2)
        r = max(0.6 * r0, rng.normal(r0, 0.07 * r0))
        if keep_out is not None and math.hypot(cy - keep_out[0], cx - keep_out[1]) < keep_out[2] + 0.5 * r:
            continue
        if any(math.hypot(cy - y, cx - x) < min_separation * (r + q) for y, x, q in centres):
            continue
        centres.append((cy, cx, r))
        covered |= np.hypot(gy - cy, gx - cx) < r
        b = _blob(
            size, cy, cx, r, rng, wobble=0.02, aspect=rng.uniform(1.0, 1.12), angle=rng.uniform(0, math.pi)
        )
        if b is None:
            continue
        sl, a, rho = b
        pallor = float(np.clip(rng.normal(pallor_depth, 0.08), 0.1, 0.85))
        prof = (1 - pallor * np.exp(-((rho / 0.42) ** 2))) * (1 - 0.25 * rho**8)
        thick[sl] += a * prof * rng.uniform(0.9, 1.1)
    layer0 += thick[None] * (STAINS["red_cell"] * np.array([1, 1, 1, 1, hb], np.float32))[:, None, None]
    mask[thick > 0.3] = M.RED_CELL


def _platelet(rng, size, cy, cx, r, layer0, mask, solid: float = 0.0, amount: float = 1.0):
    """A platelet: pale hyalomere disc with a granular centre (``solid`` in [0, 1] spreads the
    granulomere towards the rim, as in large and giant platelets)."""
    b = _blob(size, cy, cx, r, rng, wobble=0.12, aspect=rng.uniform(1.0, 1.3), angle=rng.uniform(0, math.pi))
    if b is None:
        return
    sl, a, _ = b
    shp = a.shape
    tex = ndimage.gaussian_filter(rng.standard_normal(shp, dtype=np.float32), 1.5, mode="wrap")
    tex = np.clip(0.75 + 0.5 * tex / max(float(tex.std()), 1e-6), 0, 2)
    layer0[:, sl[0], sl[1]] += a * (
        STAINS["platelet_hyalomere"][:, None, None]
        + tex * STAINS["platelet"][:, None, None] * np.clip(1.2 - (0.6 - 0.4 * solid) * b[2], 0, 1)
    ) * amount
    mask[sl][a > 0.5] = M.PLATELET


# -- nuclei ------------------------------------------------------------------------------------


def _ellipse_r(area: float, aspect: float) -> float:
    """Semi-major radius (the ``r`` of :func:`_blob`) of an ellipse of ``area`` and ``aspect`` (major/minor)."""
    return math.sqrt(max(area, 1.0) * aspect / math.pi)


def _aspect(ecc: float) -> float:
    return 1.0 / math.sqrt(max(1e-3, 1.0 - min(ecc, 0.97) ** 2))


def _lobed(rng, size, nucl, cy, cx, rc, area, nl, ecc, *, touching: bool = False):
    """``nl`` lobes on an arc inside the cell, joined by thin chromatin strands.

    Lobes are elongated along the arc (the segments of a neutrophil nucleus curve around the cell,
    leaving cytoplasm at its centre: the radial colour profile of PBC neutrophils is lighter at the
    centre than a ring of radially elongated lobes); neighbours are placed at least their summed
    semi-major radii apart (so that they show as separate lobes) unless ``touching`` (a segmented
    nucleus whose lobes overlap in the image).
    """
    span = rng.uniform(0.8, 1.3) * math.pi * (0.75 if nl == 2 else 1.0)
    asp = min(_aspect(ecc), 1.8)
    lobe_area = area / nl
    minor = _ellipse_r(lobe_area, asp) / asp
    step = span / max(nl - 1, 1)
    need = (0.55 if touching else 1.15) * minor * asp / math.sin(min(step, math.pi) / 2)
    arc_r = min(max(rc * rng.uniform(0.35, 0.5), need), max(0.2 * rc, 0.95 * rc - minor))
    start = rng.uniform(0, 2 * math.pi)
    pts = []
    for j in range(nl):
        t = start + step * j
        p = (cy + arc_r * math.sin(t) + rng.normal(0, 2), cx + arc_r * math.cos(t) + rng.normal(0, 2))
        pts.append(p)
        lr = _ellipse_r(lobe_area * rng.uniform(0.8, 1.2), asp)
        _paint_max(nucl, _blob(size, p[0], p[1], lr, rng, 0.06, asp, t + math.pi / 2 + rng.normal(0, 0.3)))
    for p, q in zip(pts[:-1], pts[1:], strict=False):
        _paint_max(nucl, _capsule(size, p, q, rng.uniform(2.0, 5.0)))


def _band(rng, size, nucl, cy, cx, rc, area, width):
    """A curved band (C/S shape) of the given width and area."""
    wid = float(np.clip(width * rng.uniform(0.8, 1.05), 10, 0.6 * rc))
    arc_r = min(rc * rng.uniform(0.5, 0.62), 0.95 * rc - wid / 2)
    span = area / (wid * arc_r)
    if span > 1.3 * math.pi:  # a longer band would close into a ring: thicken it instead
        wid *= span / (1.3 * math.pi)
        span = 1.3 * math.pi
    span = max(span, 0.6 * math.pi)
    start = rng.uniform(0, 2 * math.pi)
    k = 16
    for j in range(k):
        t = start + span * j / (k - 1)
        w = wid / 2 * (1.0 - 0.25 * abs(2 * j / (k - 1) - 1) ** 3)
        _paint_max(nucl, _blob(size, cy + arc_r * math.sin(t), cx + arc_r * math.cos(t), w, rng, 0.03))




def _solid(rng, size, nucl, ny, nx, area, ecc, solidity, t, *, solid_solidity: float = 0.95):
    """An ellipse of ``area`` and eccentricity, indented (kidney / folded) down to ``solidity``."""
    asp = _aspect(ecc)
    rn = _ellipse_r(area / max(solidity, 0.5), asp)
    ang = rng.uniform(0, math.pi)
    b = _blob(size, ny, nx, rn, rng, 0.05, asp, ang)
    _paint_max(nucl, b)
    dent_frac = solid_solidity - solidity
    if dent_frac > 0.04:
        # a disc cut from the rim removes about dent_frac of the area
        rd = rn / math.sqrt(asp) * math.sqrt(dent_frac * 1.5)
        side = ang + math.pi / 2 + (math.pi if rng.uniform() < 0.5 else 0.0)  # the hilum: a long side
        d = 1.05 * rn / asp
        dent = _blob(size, ny + d * math.sin(side), nx + d * math.cos(side), rd, rng, 0.05)
        if dent is not None:
            nucl[dent[0]] *= 1 - dent[1]


def _nucleus(rng, size, m: dict, cy, cx, rc, cell_area, g: dict, u: dict[str, float] | None = None):
    """Nucleus coverage ``(H, W)`` drawn from the class's measured shape distributions ``m`` (``u``: the
    cell's copula uniforms by feature, :func:`_uniforms`; independent draws for those it lacks)."""
    u = u or {}
    nucl = np.zeros((size, size), np.float32)
    nc = _quantile_sample(m.get("nc_ratio"), rng, 0.5, 0.12, 0.92, u.get("nc_ratio"))
    area = min(nc * g["nuc_area_gain"], 0.92) * cell_area
    hist = m.get("lobe_hist") or {"1": 1.0}
    ks = np.array([int(k) for k in hist])
    pk = np.array([float(v) for v in hist.values()])
    nl = int(rng.choice(ks, p=pk / pk.sum()))
    ecc = _quantile_sample(m.get("nuc_eccentricity"), rng, 0.5, 0.0, 0.95, u.get("nuc_eccentricity"))
    p1 = float(hist.get("1", 0.0))
    band_p = float(m.get("band_fraction", 0.0)) / p1 if p1 > 0 else 0.0
    off = _quantile_sample(m.get("nuc_offset"), rng, 0.1, 0.0, 0.6, u.get("nuc_offset")) * rc
    t = rng.uniform(0, 2 * math.pi)
    ny, nx = cy + off * math.sin(t), cx + off * math.cos(t)
    if nl >= 2:
        _lobed(rng, size, nucl, ny, nx, rc, area, nl, ecc)
    elif rng.uniform() >= band_p and 1.0 - p1 > 0.1:
        # a segmented class whose lobes touch in the image (measured as one lobe): 2-3 lobes close together
        _lobed(rng, size, nucl, ny, nx, rc, area, int(rng.integers(2, 4)), ecc, touching=True)
    elif rng.uniform() < band_p:
        _band(rng, size, nucl, cy, cx, rc, area, _quantile_sample(m.get("nuc_width"), rng, 30.0, 8, 80,
                                                                    u.get("nuc_width")))
    else:
        sol = _quantile_sample(m.get("nuc_solidity"), rng, 0.9, 0.72, 1.0, u.get("nuc_solidity"))
        # the nucleus must stay inside the cell
        rmax = math.sqrt(area / math.pi)
        if off + rmax > 0.97 * rc:
            f = max(0.0, 0.97 * rc - rmax) / max(off, 1e-6)
            ny, nx = cy + (ny - cy) * f, cx + (nx - cx) * f
        _solid(rng, size, nucl, ny, nx, area, ecc, sol, t, solid_solidity=g["solid_solidity"])
    return nucl




def make_scene(cls: str, rng: np.random.Generator, size: int = 256, *, slide: Slide | None = None,
               morphology: dict | None = None) -> Scene:
    """Draw one scene of class ``cls`` (a key of :data:`cellbench.data.classes.CLASSES`).

    Parameters
    ----------
    cls:
        PBC class; the white cell (or, for ``platelet``, a platelet) is near the centre.
    rng:
        The only source of randomness (of this image; the slide has its own).
    size:
        Square canvas in px at 0.1 um/px (256 by default).
    slide:
        The stained smear this field lies on (:class:`Slide`); drawn from ``rng`` when ``None``.
    morphology:
        Measured morphology (:func:`cellbench.sim.morphology.load_morphology`); the packaged
        PBC measurements when ``None``.
    """
    morph = morphology if morphology is not None else _default_morphology()
    m = morph["classes"].get(cls, {})
    g, c = _corrections(morph, cls)
    p, look, label = _CLASS.get(cls), cls, cls
    if p is None and cls != "platelet":
        raise ValueError(f"make_scene: unknown class {cls!r} (known: {', '.join([*_CLASS, 'platelet'])})")
    border = _borderline(morph, cls, rng) if cls in _CLASS else None
    if border is not None:
        m, p, c, look, label = border
    if slide is None:
        slide = Slide.draw(rng)
    stain = slide.stain
    depths = tuple(d + slide.focus_um + float(rng.normal(0, 0.06)) for d in LAYER_DEPTHS_UM)
    layer0 = np.zeros((5, size, size), np.float32)
    mask = np.zeros((size, size), np.uint8)
    layer0 += STAINS["plasma"][:, None, None]
    c0 = size / 2
    cy, cx = c0 + rng.normal(0, 4), c0 + rng.normal(0, 4)
    cover = _quantile_sample(m.get("rbc_cover"), rng, 0.45, 0.05, 0.9)
    cover = 1 - (1 - cover) ** slide.thickness
    rbc = dict(
        cover=cover,
        diameter=_mean(m.get("rbc_diameter"), 72.0),
        pallor_depth=float(np.clip(1.0 - _mean(m.get("rbc_pallor"), 0.9), 0.1, 0.8)) * g["pallor_gain"],
        min_separation=g["rbc_min_separation"],
        hb=float(stain[4]),
    )
    rbc["pallor_depth"] = float(np.clip(rbc["pallor_depth"], 0.2, 0.75))
    n_plt = rng.poisson(max(0.0, _mean(m.get("platelets"), 1.0) - 1.0) * 0.4)
    if cls == "platelet":
        area = _quantile_sample(m.get("plt_area"), rng, 1500.0, 150.0, 6000.0)
        _red_cells(rng, size, layer0, mask, (cy, cx, math.sqrt(area / math.pi)), **rbc)
        for _ in range(n_plt):
            _platelet(rng, size, *rng.uniform(0, size, 2), rng.uniform(6, 11), layer0, mask)
        if rng.uniform() < float(m.get("clumped_fraction", 0.3)):  # a clump of several platelets
            k = int(rng.integers(2, 6))
            for _ in range(k):
                r = g["plt_r_gain"] * math.sqrt(area / k / math.pi) * rng.uniform(0.8, 1.2)
                d = math.sqrt(area / math.pi) * rng.uniform(0.0, 0.7)
                a = rng.uniform(0, 2 * math.pi)
                _platelet(rng, size, cy + d * math.sin(a), cx + d * math.cos(a), r, layer0, mask, 0.8, 0.8)
        else:  # single (large areas: giant platelets)
            _platelet(rng, size, cy, cx, g["plt_r_gain"] * math.sqrt(area / math.pi), layer0, mask, 0.8, 0.8)
        empty = (np.zeros(5, np.float32), np.zeros((size, size), np.float32))
        return Scene([layer0 * stain[:, None, None], empty, empty], depths, mask, cls)
    # the cell's jointly drawn features (the class's measured copula; none for a class without one)
    z = _copula_normals(m, rng)
    cu = _uniforms(z)
    cell_area = c.get("area_gain", 1.0) * _quantile_sample(
        m.get("cell_area"), rng, math.pi * p["radius"][0] ** 2, 2500.0, 40000.0, cu.get("cell_area")
    )
    asp_c = rng.uniform(1.0, 1.1)
    rc = math.sqrt(cell_area * asp_c / math.pi)
    _red_cells(rng, size, layer0, mask, (cy, cx, rc), **rbc)
    for _ in range(n_plt):
        _platelet(rng, size, *rng.uniform(0, size, 2), rng.uniform(6, 11), layer0, mask)
    cell = _blob(size, cy, cx, rc, rng, 0.025, asp_c, rng.uniform(0, math.pi))
    cell_a = np.zeros((size, size), np.float32)
    sl, a, rho = cell
    cell_a[sl] = a
    dome = np.zeros((size, size), np.float32)
    dome[sl] = a * (1.0 - 0.35 * np.clip(rho, 0, 1) ** 2)
    nucl = _nucleus(rng, size, m, cy, cx, rc, cell_area * c.get("nuc_of_dense", 1.0), g, cu) * cell_a
    fine = _smooth_noise(rng, size, 1.2)
    coarse = _smooth_noise(rng, size, 3.5)
    # per-cell cytoplasm amount: the measured between-cell spread of cytoplasm density
    # (log-normal, sigma ``cyt_cv_gain`` x the measured coefficient of variation, at most ``cyt_cv_max``)
    cyt_s = m.get("cyt_od")
    cyt_sigma = g["cyt_cv_gain"] * min(g["cyt_cv_max"], cyt_s["sd"] / max(cyt_s["mean"], 1e-3)) if cyt_s else 0.0
    cyt_z = z["cyt_od"] if "cyt_od" in z else (rng.normal(0, 1.0) if cyt_s else 0.0)
    cyt_scale = float(np.exp(cyt_sigma * cyt_z)) if cyt_s else 1.0
    # per-cell cytoplasm composition (:data:`CYT_FACTORS`, sigmas ``cyt_factor_sd``): the class's
    # between-cell spread of cytoplasm colour beyond what the slide and the rendering give; drawn only
    # for classes that have it, so the other classes' scenes do not change
    cyt_stain = p["cyt"]
    if "cyt_factor_sd" in c:
        u = rng.normal(0.0, 1.0, len(CYT_FACTORS)) * np.asarray(c["cyt_factor_sd"], np.float64)
        cyt_stain = (cyt_stain * np.exp(u @ CYT_FACTORS)).astype(np.float32)
    cyt_amount = dome * (1 - 0.75 * nucl) * np.clip(
        1 + c.get("cyt_tex_coarse", g["cyt_tex_coarse"]) * coarse + g["cyt_tex_fine"] * fine, 0.2, 2.0) * cyt_scale
    n_vac = rng.poisson(max(0.0, _mean(m.get("vacuoles"), 0.0) - g["vacuole_baseline"]))
    for _ in range(n_vac):
        ang, dist = rng.uniform(0, 2 * math.pi), rc * rng.uniform(0.5, 0.85)
        v = _blob(size, cy + dist * math.sin(ang), cx + dist * math.cos(ang), rng.uniform(2.5, 6), rng, 0.05)
        if v is not None:
            cyt_amount[v[0]] *= 1 - 0.85 * v[1]
    # red cells under the white cell are hidden (it lies on top and displaces them)
    layer0 *= (1 - cell_a)[None]
    layer0 += cell_a[None] * STAINS["plasma"][:, None, None]
    layer0 += cyt_amount[None] * cyt_stain[:, None, None]
    cg, cg0 = c.get("chrom_gain", (1.0, 1.0)), g["chrom_gain"]
    fine_c = cg0[0] * cg[0] * _quantile_sample(m.get("chrom_fine"), rng, 0.15, 0.02, 0.5, cu.get("chrom_fine"))
    clump = cg0[1] * cg[1] * _quantile_sample(m.get("chrom_coarse"), rng, 0.14, 0.02, 0.5, cu.get("chrom_coarse"))
    chrom = np.clip(1 + fine_c * fine + clump * coarse, 0.15, 2.5)
    part1 = (p["nuc"] * stain, (nucl * chrom).astype(np.float32))
    part2 = (np.zeros(5, np.float32), np.zeros((size, size), np.float32))
    mask[cell_a > 0.5] = M.CYTOPLASM
    mask[nucl > 0.5] = M.NUCLEUS
    if p.get("gran") is not None:
        region = cell_a if p.get("gran_over_nucleus") else cell_a * (1 - nucl)
        gmap = _granules(rng, size, region * (dome > 0.2), c["gran_r"], c["gran_cover"]) * cell_a
        part2 = (p["gran"] * stain, gmap.astype(np.float32))
        if c["gran_r"] >= 3.0 or look == "ig":  # coarse granules
            mask[(gmap > 0.5) & (cell_a > 0.5)] = M.GRANULES
        else:  # fine neutrophil/monocyte granules: label only the densest spots
            mask[(gmap > 0.8) & (cell_a > 0.5) & (nucl < 0.5)] = M.GRANULES
    return Scene([layer0 * stain[:, None, None], part1, part2], depths, mask, label)

