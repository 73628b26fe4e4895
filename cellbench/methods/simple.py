"""The two simplest normalizers: ``identity`` (the raw-X baseline) and ``affine``."""

from __future__ import annotations

from typing import Self

import torch

from ..data.sets import PairedSet, UnpairedSet
from ..errors import ConfigError
from .base import Normalizer, register_normalizer


def sample_pixels(
    data: PairedSet, max_pixels: int, seed: int, region_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random sample of corresponding pixels ``(P, 3)`` from ``data.x`` and ``data.y``."""
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
