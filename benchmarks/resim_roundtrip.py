"""Re-simulation round trip on real PBC images: how exactly the absorber estimate reproduces them.

For each of ``--n`` real DM96 images (the same number from every class, evenly spaced in file
order, centre-cropped to ``--size``), :func:`cellbench.sim.resim.estimate_amounts` estimates the
per-pixel absorber amounts under the ``dm96-like`` system (NNLS in optical density after inverting
its ISP, with the image's own background), and the amounts are rendered back under the same system
without optics, noise or sharpening. Prints the mean CIEDE2000 (scikit-image) between each real
image and its re-rendering, per class and overall, then one summary line; exits 1 when the mean
exceeds the target (1.5, issue 3).

    .venv/bin/python benchmarks/resim_roundtrip.py --n 40
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab

from cellbench.data.classes import CLASSES
from cellbench.io import read_image
from cellbench.sim import load_system, render
from cellbench.sim.resim import estimate_amounts, image_background, with_background
from cellbench.tensors import center_crop_or_pad

TARGET = 1.5
DEFAULT_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pbc_dm96"


def sample_images(root: str | os.PathLike, n: int, size: int) -> tuple[np.ndarray, list[str]]:
    """``n`` real images (``ceil(n / 8)`` per class, evenly spaced, first ``n`` kept), uint8 ``(n, S, S, 3)``."""
    per_class = -(-n // len(CLASSES))
    imgs, labels = [], []
    for cls in CLASSES:
        files = sorted(Path(root, cls).glob("*.jpg"))
        if not files:
            continue
        pick = np.linspace(0, len(files) - 1, min(per_class, len(files))).round().astype(int)
        for i in pick:
            imgs.append(center_crop_or_pad(read_image(files[i]), size))
            labels.append(cls)
    order = np.argsort(np.tile(np.arange(per_class), len(set(labels)))[: len(labels)], kind="stable")[:n]
    return np.stack([imgs[i] for i in order]), [labels[i] for i in order]


def roundtrip_delta_e(images: np.ndarray, system: str = "dm96-like") -> np.ndarray:
    """Mean CIEDE2000 ``(N,)`` between each uint8 image ``(N, H, W, 3)`` and its re-rendering."""
    s = load_system(system)
    out = []
    for img in images:
        bg = image_background(img)
        conc = estimate_amounts(img, s, background=bg)
        back = render(with_background(s, bg), conc.transpose(2, 0, 1)[None], (0.0,), optics=False, sharpen=False)
        out.append(deltaE_ciede2000(rgb2lab(img / 255.0), rgb2lab(back / 255.0)).mean())
    return np.asarray(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL, help="PBC labelled folder (default %(default)s)")
    ap.add_argument("--n", type=int, default=40, help="images, balanced over the classes (default 40)")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args(argv)
    if args.n < 1:
        print("resim_roundtrip: --n must be at least 1", file=sys.stderr)
        return 2
    if not args.real.is_dir():
        print(f"resim_roundtrip: {args.real}: no such folder; pass --real PBC_DIR", file=sys.stderr)
        return 2
    images, labels = sample_images(args.real, args.n, args.size)
    de = roundtrip_delta_e(images)
    for cls in CLASSES:
        sel = [i for i, lab in enumerate(labels) if lab == cls]
        if sel:
            print(f"{cls:>13}: {de[sel].mean():.2f} ({len(sel)} images)")
    mean = float(de.mean())
    verdict = "PASS" if mean <= TARGET else "FAIL"
    print(f"re-simulation round trip on {len(de)} real PBC images at {args.size} px: mean CIEDE2000 {mean:.2f} "
          f"(max {de.max():.2f}); target <= {TARGET:g}: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
