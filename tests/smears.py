"""Constructed smear images with known regions: a test fixture (not the simulator).

Moved out of ``cellbench/segmentation.py`` (issue #12): production code does not ship test data.
"""

from __future__ import annotations

import torch

from cellbench.data.masks import CYTOPLASM, NUCLEUS, RED_CELL

#: Optical densities (R, G, B; natural log) of the regions of :func:`toy_smears`, DM96-like.
TOY_DENSITY = {RED_CELL: (0.20, 0.60, 0.34), CYTOPLASM: (0.32, 0.46, 0.12), NUCLEUS: (1.00, 1.60, 0.38)}


def toy_smears(n: int, size: int = 64, *, seed: int = 0, wbc: bool = True,
               background: tuple[float, float, float] = (0.95, 0.88, 0.78),
               noise: float = 0.01, texture: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Constructed smear images with known regions (not the simulator).

    Each image has a background, 3-6 red-cell discs, and (when ``wbc``) a centred white cell: a
    cytoplasm disc holding a nucleus disc. Colours follow Beer-Lambert,
    ``I = background * exp(-od)`` with :data:`TOY_DENSITY`, plus Gaussian noise. ``texture`` > 0
    scales each pixel's density per channel by ``1 + texture * u`` (``u`` uniform in [-1, 1]) and
    the background by ``1 + 0.2 * texture * u``, so every region's colours span all three
    dimensions (needed to identify a per-region 3x4 colour map).

    Returns
    -------
    images:
        ``float32 (n, 3, size, size)`` in [0, 1].
    masks:
        ``uint8 (n, size, size)`` labels 0, 1, 3, 4.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    c = (size - 1) / 2
    for i in range(n):
        for _ in range(int(torch.randint(3, 7, (1,), generator=g))):
            cx, cy = (torch.rand(2, generator=g) * size).tolist()
            rad = size * (0.09 + 0.03 * float(torch.rand(1, generator=g)))
            masks[i][(xx - cx) ** 2 + (yy - cy) ** 2 < rad**2] = RED_CELL
        if wbc:
            r_cell = size * (0.22 + 0.05 * float(torch.rand(1, generator=g)))
            r_nuc = r_cell * (0.45 + 0.15 * float(torch.rand(1, generator=g)))
            d2 = (xx - c) ** 2 + (yy - c) ** 2
            masks[i][d2 < r_cell**2] = CYTOPLASM
            masks[i][d2 < r_nuc**2] = NUCLEUS
    od = torch.zeros(n, 3, size, size)
    for lab, dens in TOY_DENSITY.items():
        od += (masks == lab)[:, None].float() * torch.tensor(dens).view(1, 3, 1, 1)
    bgt = torch.tensor(background).view(1, 3, 1, 1).expand(n, 3, size, size)
    if texture > 0:
        od = od * (1 + texture * (2 * torch.rand(od.shape, generator=g) - 1))
        bgt = bgt * (1 + 0.2 * texture * (2 * torch.rand(od.shape, generator=g) - 1))
    images = bgt * torch.exp(-od)
    images = images + noise * torch.randn(images.shape, generator=g)
    return images.clamp(0, 1), masks
