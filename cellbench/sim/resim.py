"""Re-simulation: real single-system images -> absorber amounts -> rendering under another system.

For each pixel of a real image taken on the source system:

1. measure the image's own background colour (mean of its brightest 20 % of pixels: smears are
   mostly empty slide) and invert the source ISP white-balanced on it (tone curve, output gain,
   colour matrix, white balance; :meth:`System.linearize`) to the raw signal relative to the
   background, ``r_c`` (1 = empty slide), so lamp or scanner drift between images does not turn
   into stain;
2. optical density per channel ``d_c = -log10 r_c``;
3. absorber amounts ``c >= 0`` minimizing ``||d(c) - d||^2 + lam ||c||^2`` with
   ``d_c(c) = -log10(sum_l R_lc 10^(-sum_k c_k eps_k(l)) / sum_l R_lc)`` (the source system's
   broadband Beer-Lambert model): non-negative least squares (NNLS) on the linearized model, then
   projected Levenberg-Marquardt steps on the exact model. Three channels do not determine five
   absorbers; the small ridge ``lam`` picks the least-stain solution among equals.

Step 3 is solved once per source system on a grid of ``d`` (a 3-D look-up table, trilinearly
interpolated) and optionally refined per pixel. Rendering the amounts back under the source system
with ``optics=False`` (no added blur; the real image already carries the source optics) and
without noise and sharpening reproduces the input (round trip, see tests); rendering them under the
target system gives its colours, spectra, camera and ISP (not its optics or focus: the real image's
spatial detail is kept).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.folders import index_labelled
from ..data.splits import stratified_split, write_splits
from ..errors import DatasetError
from ..io import read_image, write_image, write_mask
from ..tensors import center_crop_or_pad
from .system import LN10, System, load_system, render

log = logging.getLogger(__name__)

D_MIN, D_MAX, D_STEP = -0.06, 2.46, 0.06
RIDGE = 1e-3


def _model(system: System):
    keep = system.response.max(axis=1) > 1e-4 * system.response.max()
    eps = system.eps[:, keep].astype(np.float64)  # (5, L)
    resp = system.response[keep].astype(np.float64)  # (L, 3)
    resp = resp / resp.sum(axis=0)  # relative to the background
    return eps, resp


def _od_and_jacobian(c: np.ndarray, eps: np.ndarray, resp: np.ndarray):
    """``d (P, 3)`` and ``J = dd/dc (P, 3, 5)`` of amounts ``c (P, 5)``."""
    t = np.exp(-LN10 * (c @ eps))  # (P, L)
    r = np.maximum(t @ resp, 1e-12)  # (P, 3)
    d = -np.log10(r)
    # dd_c/dc_k = sum_l resp_lc t_l eps_kl / r_c, as one (P, L) @ (L, 15) product
    b = (resp[:, :, None] * eps.T[:, None, :]).reshape(len(resp), 15)
    j = (t @ b).reshape(-1, 3, 5) / r[:, :, None]
    return d, j


def solve_amounts(
    d: np.ndarray, system: System, *, iters: int = 25, init: np.ndarray | None = None, lam: float = RIDGE
) -> np.ndarray:
    """Absorber amounts ``(P, 5)`` for channel optical densities ``d (P, 3)`` (step 3 above)."""
    eps, resp = _model(system)
    d = np.asarray(d, dtype=np.float64)
    if init is None:  # vectorized projected-gradient NNLS on the linearized model d ~ a c
        a = resp.T @ eps.T  # (3, 5)
        h = a.T @ a + lam * np.eye(5)
        lr = 1.0 / np.linalg.eigvalsh(h).max()
        init = np.zeros((len(d), 5))
        atd = np.maximum(d, 0) @ a  # (P, 5)
        for _ in range(200):
            init = np.maximum(init - lr * (init @ h - atd), 0.0)
    c = np.array(init, dtype=np.float64)
    mu = np.full(len(d), 1e-2)
    eye = np.eye(5)
    dm, j = _od_and_jacobian(c, eps, resp)
    cost = ((dm - d) ** 2).sum(1) + lam * (c**2).sum(1)
    for _ in range(iters):
        res = dm - d
        jtj = np.einsum("pck,pcm->pkm", j, j) + (lam + mu)[:, None, None] * eye
        g = np.einsum("pck,pc->pk", j, res) + lam * c
        trial = np.maximum(c - np.linalg.solve(jtj, g[:, :, None])[:, :, 0], 0.0)
        dm_t, j_t = _od_and_jacobian(trial, eps, resp)
        cost_t = ((dm_t - d) ** 2).sum(1) + lam * (trial**2).sum(1)
        better = cost_t <= cost
        # Levenberg-Marquardt: accept improving steps and relax damping, else damp harder
        c[better], dm[better], j[better], cost[better] = (
            trial[better],
            dm_t[better],
            j_t[better],
            cost_t[better],
        )
        mu = np.where(better, np.maximum(mu / 3, 1e-6), mu * 4)
    return c


@lru_cache(maxsize=4)
def _lut(system_key: str) -> tuple[np.ndarray, np.ndarray]:
    system = load_system(system_key)
    axis = np.arange(D_MIN, D_MAX + 1e-9, D_STEP)
    g = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    log.info("building the %s absorber look-up table (%d entries)", system.name, len(g))
    c = solve_amounts(g, system)
    return axis, c.reshape(len(axis), len(axis), len(axis), 5).astype(np.float32)


def _system_key(system: System | str) -> str:
    return system if isinstance(system, str) else system.source.removeprefix("<built-in ").removesuffix(">")


def image_background(image: np.ndarray, quantile: float = 0.8) -> np.ndarray:
    """Background colour ``(3,)`` in [0, 1] of a uint8 ``(H, W, 3)`` image: mean of the pixels whose
    brightness (R+G+B) is at or above the ``quantile`` quantile."""
    px = np.asarray(image, dtype=np.float64).reshape(-1, 3) / 255.0
    br = px.sum(1)
    return px[br >= np.quantile(br, quantile)].mean(0)


def with_background(system: System, background: np.ndarray) -> System:
    """A copy of ``system`` whose ISP white-balances the empty slide to ``background`` (RGB in [0, 1])."""
    return dataclasses.replace(
        system, background_rgb=np.clip(np.asarray(background, dtype=np.float64), 0.05, 1.0)
    )


def estimate_amounts(
    images: np.ndarray, src: System | str, *, refine: int = 0, background: np.ndarray | None = None
) -> np.ndarray:
    """Absorber amounts ``(H, W, 5)`` of a uint8 ``(H, W, 3)`` image of the source system.

    ``background``: the image's empty-slide colour (default: :func:`image_background`).
    ``refine``: extra Levenberg-Marquardt iterations per pixel, starting from the table.
    """
    key = _system_key(src)
    system = load_system(key)
    images = np.asarray(images)
    system = with_background(system, image_background(images) if background is None else background)
    rgb = np.asarray(images, dtype=np.float64) / 255.0
    shape = rgb.shape[:-1]
    lin = system.linearize(rgb.reshape(-1, 3))
    d = -np.log10(np.clip(lin, 1e-4, None))
    axis, table = _lut(key)
    u = np.clip((d - D_MIN) / D_STEP, 0, len(axis) - 1.0001)
    i0 = np.floor(u).astype(np.int64)
    f = (u - i0).astype(np.float32)
    out = np.zeros((len(d), 5), np.float32)
    for dz in (0, 1):
        wz = f[:, 2] if dz else 1 - f[:, 2]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1 - f[:, 1]
            for dx in (0, 1):
                wx = f[:, 0] if dx else 1 - f[:, 0]
                out += (wx * wy * wz)[:, None] * table[i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz]
    if refine:
        inside = (d.min(1) > 0.0) & (d.max(1) < D_MAX)
        if inside.any():
            out[inside] = solve_amounts(d[inside], system, iters=refine, init=out[inside])
    return out.reshape(*shape, 5)


def resimulate_images(
    images,
    src: System | str = "dm96-like",
    dst: System | str = "dm1200-like",
    *,
    seed: int | None = 0,
    refine: int = 0,
) -> torch.Tensor:
    """Re-render real images of system ``src`` under system ``dst``.

    Parameters
    ----------
    images:
        uint8 ``(N, H, W, 3)`` numpy array, or a float tensor ``(N, 3, H, W)`` in [0, 1].
    seed:
        Seed of the target system's sensor noise (``None``: no noise).

    Returns
    -------
    Tensor
        float32 ``(N, 3, H, W)`` in [0, 1] (8-bit quantized renderings / 255).
    """
    if isinstance(images, torch.Tensor):
        arr = (
            (images.detach().cpu().float().clamp(0, 1) * 255)
            .round()
            .to(torch.uint8)
            .permute(0, 2, 3, 1)
            .numpy()
        )
    else:
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
    dst_sys = load_system(dst)
    outs = []
    same = _system_key(src) == _system_key(dst)
    for n, img in enumerate(arr):
        bg = image_background(img)
        conc = estimate_amounts(img, src, refine=refine, background=bg)  # (H, W, 5)
        target = with_background(dst_sys, bg) if same else dst_sys  # the round trip keeps the image's white
        layers = conc.transpose(2, 0, 1)[None]
        rng = None if seed is None else np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(n,)))
        outs.append(render(target, layers, (0.0,), rng=rng, optics=False, sharpen=False))
    t = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2).float() / 255.0
    return t.contiguous()


def resimulate_folder(
    real: str | os.PathLike,
    out: str | os.PathLike,
    *,
    src: System | str = "dm96-like",
    dst: System | str = "dm1200-like",
    size: int = 256,
    limit_per_class: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> int:
    """Turn a labelled folder ``REAL/<class>/<file>`` into pairs ``OUT/X`` (re-simulated under
    ``dst``), ``OUT/Y`` (the real images, centre crop/pad to ``size``), ``OUT/masks`` (from
    :class:`cellbench.segmentation.ColourSegmenter` fitted on the real images) and ``splits.csv``
    (the real folder's split). Returns the number of pairs written."""
    from ..segmentation import ColourSegmenter

    real, out = Path(real), Path(out)
    items, _ = index_labelled(real, write_split=False)
    if limit_per_class is not None:
        counts: dict[str, int] = {}
        kept = []
        for it in items:
            if counts.get(it.cls, 0) < limit_per_class:
                kept.append(it)
                counts[it.cls] = counts.get(it.cls, 0) + 1
        items = kept
    if not items:
        raise DatasetError(f"{real}: no images to re-simulate")
    src_sys, dst_sys = load_system(src), load_system(dst)
    # fit the segmenter on (up to 400) real images, spread over the classes
    step = max(1, len(items) // 400)
    sample = np.stack([center_crop_or_pad(read_image(it.path), size) for it in items[::step]])
    seg = ColourSegmenter().fit(torch.from_numpy(sample).permute(0, 3, 1, 2).float() / 255.0, seed=seed)
    splits = {}
    for n, it in enumerate(tqdm(items, desc=f"resim -> {out}", unit="img", disable=not progress)):
        y = center_crop_or_pad(read_image(it.path), size)
        # the target system's sensor noise, seeded per image
        x = resimulate_images(y[None], src_sys, dst_sys, seed=seed * 1_000_003 + n)
        x8 = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        mask = seg.predict(torch.from_numpy(y[None]).permute(0, 3, 1, 2).float() / 255.0)[0].numpy()
        write_image(out / "X" / it.cls / f"{it.id}.png", x8)
        write_image(out / "Y" / it.cls / f"{it.id}.png", y)
        write_mask(out / "masks" / it.cls / f"{it.id}.png", mask.astype(np.uint8))
        splits[(it.cls, it.id)] = it.split
    write_splits(out / "splits.csv", splits or stratified_split([(it.cls, it.id) for it in items], seed=seed))
    return len(items)
