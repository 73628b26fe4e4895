"""The two simplest normalizers: ``identity`` (the raw-X baseline) and ``affine``."""

from __future__ import annotations

from typing import Self

import torch

from ..data.sets import PairedSet, UnpairedSet
from ..errors import ConfigError
from .base import Normalizer, register_normalizer

#: A streamed training set is sampled to at most this many image pairs before its pixels are
#: (seeded; 256 pairs at 256 px are 16.8 M candidate pixels for affine's 2 M and poly's 1 M).
SAMPLE_IMAGES = 256


def _image_sample(data: PairedSet, n: int, seed: int) -> PairedSet:
    """At most ``n`` pairs of ``data`` (a seeded choice, in index order), as in-memory float tensors."""
    import numpy as np

    idx = np.arange(len(data))
    if len(idx) > n:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), size=n, replace=False))
    t = torch.as_tensor(idx, dtype=torch.long)
    return PairedSet(data.x[t], data.y[t], [data.labels[i] for i in idx], [data.ids[i] for i in idx])


def sample_pixels(
    data: PairedSet, max_pixels: int, seed: int, region_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random sample of corresponding pixels ``(P, 3)`` from ``data.x`` and ``data.y``.

    A streamed training set (images read on demand, :class:`cellbench.data.stream.LazyImages`) is
    first narrowed to a seeded sample of at most :data:`SAMPLE_IMAGES` pairs, read once; the pixels
    are then drawn among them as from in-memory images (a set of at most that many pairs gives the
    same sample as in memory). In-memory tensors are sampled as they always were.
    """
    if hasattr(data.x, "batches") or hasattr(data.y, "batches"):
        data = _image_sample(data, SAMPLE_IMAGES, seed)
        if region_mask is not None:
            raise ConfigError("a region mask cannot be combined with a streamed training set")
    x = data.x.permute(0, 2, 3, 1).reshape(-1, 3)
    y = data.y.permute(0, 2, 3, 1).reshape(-1, 3)
    idx = torch.arange(x.shape[0]) if region_mask is None else region_mask.reshape(-1).nonzero().squeeze(1)
    if idx.numel() > max_pixels:
        g = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(idx.numel(), generator=g)[:max_pixels]]
    return x[idx].double(), y[idx].double()


def require_pairs(data: PairedSet | UnpairedSet, name: str) -> PairedSet:
    if not isinstance(data, PairedSet):
        raise ConfigError(f"{name!r} is fitted on registered pairs; this data has none "
                          "(use an unpaired method such as histmatch, reinhard or hm)")
    if len(data) == 0:
        raise ConfigError(f"{name!r}: the training split is empty")
    return data


@register_normalizer
class IdentityNormalizer(Normalizer):
    """Leaves images unchanged: the raw-X baseline."""

    name = "identity"
    description = "no change: the raw-X baseline every method must beat"
    data_kinds = ("paired", "unpaired")
    needs_fit = False

    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0) -> Self:
        self.fitted = True
        return self

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()


@register_normalizer
class AffineNormalizer(Normalizer):
    """Global 3x4 affine colour map ``y = A x + b`` fitted by least squares on paired RGB pixels.

    Parameters
    ----------
    max_pixels:
        Pixels sampled (seeded) from the training pairs for the fit.
    """

    name = "affine"
    description = "global 3x4 least-squares colour map fitted on paired pixels"

    def __init__(self, max_pixels: int = 2_000_000) -> None:
        super().__init__(max_pixels=max_pixels)
        self.matrix = torch.eye(3, 4, dtype=torch.float32)

    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0) -> Self:
        data = require_pairs(data, self.name)
        x, y = sample_pixels(data, self.params["max_pixels"], seed)
        design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # (P, 4)
        sol = torch.linalg.lstsq(design, y, driver="gelsd").solution  # (4, 3)
        self.matrix = sol.T.float().contiguous()  # (3, 4)
        self.fitted = True
        return self

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        m = self.matrix.to(images.device)
        return torch.einsum("ij,njhw->nihw", m[:, :3], images) + m[:, 3].view(1, 3, 1, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"matrix": self.matrix}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.matrix = state["matrix"].float()

    def to(self, device) -> Self:
        self.matrix = self.matrix.to(device)
        return self
