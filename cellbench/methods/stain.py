"""``reinhard`` and ``macenko``: the classical stain normalizers, via MIT-licensed ``torchstain``.

Both are fitted on the target system's (Y) training images. torchstain fits on **one** reference
image; here the reference is a **mosaic**: ``n_reference`` target training images drawn with the
seed and placed side by side, so the reference statistics (Reinhard: LAB means and standard
deviations; Macenko: stain vectors and 99th-percentile concentrations) describe the target system
rather than one cell.

torchstain works per image on 0-255 tensors and fails on low-content images (nearly all
background: too few pixels above the optical-density threshold, a degenerate covariance; constant
images: zero standard deviation). Each image is normalized separately. A uniform image (every
pixel the same colour to within one grey level: blank, black or saturated; Reinhard would divide by
its zero standard deviation and return black without an error) is not given to torchstain; it, and
any image on which torchstain raises or returns non-finite values, is returned unchanged (identity),
a warning is logged, and ``passthrough_count`` grows by one. The count starts at zero on every
:meth:`fit` and :meth:`~cellbench.methods.base.Normalizer.load` and accumulates over ``transform``
calls, so the benchmark reads it after transforming the test split. Outputs are quantized to 8 bits
by torchstain.

References
----------
Reinhard et al., "Color transfer between images", IEEE CG&A 21(5), 2001.
Macenko et al., "A method for normalizing histology slides for quantitative analysis", ISBI 2009.
"""

from __future__ import annotations

import logging
from typing import Self

import torch
from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

from ..data.sets import PairedSet, UnpairedSet
from ..errors import CheckpointError
from .base import Normalizer, register_normalizer
from .histmatch import target_images

log = logging.getLogger(__name__)

#: Exceptions torchstain raises on degenerate images (empty selections, singular matrices).
_FAILURES = (RuntimeError, ValueError, IndexError, ZeroDivisionError, torch.linalg.LinAlgError)


def reference_mosaic(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``(3, H, n*W)`` mosaic of ``n`` seeded-sampled images, 0-255 float (torchstain's scale)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[: max(1, n)].sort().values
    return torch.cat(list(images[idx].float().cpu()), dim=2) * 255.0


def is_uniform(image: torch.Tensor) -> bool:
    """Whether every pixel of a ``(3, H, W)`` [0, 1] image has the same colour to within one 8-bit grey level."""
    flat = image.reshape(image.shape[0], -1)
    return bool(((flat.amax(1) - flat.amin(1)) * 255.0 < 1.0).all())


class _TorchstainNormalizer(Normalizer):
    """Shared per-image loop with the low-content guard."""

    data_kinds = ("paired", "unpaired")

    def _normalize_one(self, image255: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(images)
        for i in range(images.shape[0]):
            if is_uniform(images[i]):
                ok, res = False, "a uniform image"
            else:
                try:
                    res = self._normalize_one(images[i] * 255.0).float() / 255.0
                    ok = res.shape == images[i].shape and bool(torch.isfinite(res).all())
                    res = res if ok else "non-finite output"
                except _FAILURES as exc:
                    ok, res = False, exc
            if not ok:
                log.warning("%s: cannot normalize image %d of the batch (%s); returned unchanged",
                            self.name, i, res)
                res = images[i]
                self.passthrough_count += 1
            out[i] = res
        return out


@register_normalizer
class ReinhardNormalizer(_TorchstainNormalizer):
    """Reinhard colour transfer: match per-channel LAB mean and std to the target reference.

    Parameters
    ----------
    n_reference:
        Target training images in the reference mosaic.
    """

    name = "reinhard"
    description = "Reinhard LAB mean/std transfer (torchstain) to a mosaic of target images"

    def __init__(self, n_reference: int = 16) -> None:
        super().__init__(n_reference=n_reference)
        self.means = torch.zeros(3)
        self.stds = torch.ones(3)

    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0) -> Self:
        ref = reference_mosaic(target_images(data, self.name), self.params["n_reference"], seed)
        ts = TorchReinhardNormalizer()
        ts.fit(ref)
        self.means, self.stds = ts.target_means.float(), ts.target_stds.float()
        self.passthrough_count = 0
        if not (torch.isfinite(self.means).all() and torch.isfinite(self.stds).all()):
            raise CheckpointError("reinhard: the reference mosaic gave non-finite statistics; "
                                  "check the target training images")
        self.fitted = True
        return self

    def _normalize_one(self, image255: torch.Tensor) -> torch.Tensor:
        ts = TorchReinhardNormalizer()
        ts.target_means, ts.target_stds = self.means.to(image255.device), self.stds.to(image255.device)
        return ts.normalize(image255).permute(2, 0, 1)  # torchstain gives (H, W, 3) uint8

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"means": self.means, "stds": self.stds}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.means, self.stds = state["means"].float(), state["stds"].float()


@register_normalizer
class MacenkoNormalizer(_TorchstainNormalizer):
    """Macenko stain normalization: stain vectors by SVD of optical density, then concentrations
    rescaled to the reference's and re-rendered with the reference's stain vectors.

    Parameters
    ----------
    n_reference:
        Target training images in the reference mosaic.
    io:
        Transmitted light intensity (0-255) of torchstain's optical density.
    alpha:
        Angle percentile for the stain vectors.
    beta:
        Optical-density threshold below which pixels count as background (transparent).
    """

    name = "macenko"
    description = "Macenko stain-vector normalization (torchstain) to a mosaic of target images"

    def __init__(self, n_reference: int = 16, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15) -> None:
        super().__init__(n_reference=n_reference, io=io, alpha=alpha, beta=beta)
        ts = TorchMacenkoNormalizer()
        self.he_ref, self.max_c_ref = ts.HERef.float(), ts.maxCRef.float()

    def _kw(self) -> dict:
        return {"Io": self.params["io"], "alpha": self.params["alpha"], "beta": self.params["beta"]}

    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0) -> Self:
        ref = reference_mosaic(target_images(data, self.name), self.params["n_reference"], seed)
        ts = TorchMacenkoNormalizer()
        try:
            ts.fit(ref, **self._kw())
        except _FAILURES as exc:
            raise CheckpointError(f"macenko: cannot find stain vectors in the target reference mosaic ({exc}); "
                                  "the target training images hold too little stained content") from None
        self.he_ref, self.max_c_ref = ts.HERef.float().cpu(), ts.maxCRef.float().cpu()
        self.passthrough_count = 0
        self.fitted = True
        return self

    def _normalize_one(self, image255: torch.Tensor) -> torch.Tensor:
        ts = TorchMacenkoNormalizer()
        ts.HERef, ts.maxCRef = self.he_ref.to(image255.device), self.max_c_ref.to(image255.device)
        out, _, _ = ts.normalize(image255, stains=False, **self._kw())  # (H, W, 3) int
        return out.permute(2, 0, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"he_ref": self.he_ref, "max_c_ref": self.max_c_ref}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.he_ref, self.max_c_ref = state["he_ref"].float(), state["max_c_ref"].float()
