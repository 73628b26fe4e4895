"""``histmatch``: per-channel histogram matching to the target system's training distribution.

The algorithm is scikit-image's :func:`skimage.exposure.match_histograms` (its reference
implementation, ``_match_cumulative_cdf``): for each channel, the cumulative quantile of every
source value is looked up in the cumulative distribution of the reference values by linear
interpolation (``np.interp``). Here the reference is the pooled histogram of all target-system
(Y) training pixels at 256 levels (the images come from 8-bit files), and each image's own
histogram is taken at 256 levels too; for inputs on that grid (``k / 255``) the result equals
``match_histograms(image, reference, channel_axis=-1)`` on float images. Off-grid inputs are
interpolated linearly between the two neighbouring levels' outputs.
"""

from __future__ import annotations

from typing import Self

import torch

from ..data.sets import PairedSet, UnpairedSet
from ..errors import CheckpointError, ConfigError
from .base import Normalizer, register_normalizer

LEVELS = 256


def target_images(data: PairedSet | UnpairedSet, name: str) -> torch.Tensor:
    """The target-system (Y) training images of paired or unpaired data."""
    if isinstance(data, PairedSet):
        y = data.y
    elif isinstance(data, UnpairedSet):
        y = data.y.images
    else:
        raise ConfigError(f"{name}: cannot fit on {type(data).__name__}; pass a PairedSet or UnpairedSet")
    if len(y) == 0:
        raise ConfigError(f"{name}: the training split has no target-system images")
    return y


def channel_histograms(images: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel counts at 256 levels: ``int64 (N, 3, 256)``."""
    n = images.shape[0]
    lv = (images.clamp(0, 1) * (LEVELS - 1)).round().long().reshape(n, 3, -1)
    offs = (torch.arange(n * 3, device=images.device) * LEVELS).view(n, 3, 1)
    return torch.bincount((lv + offs).reshape(-1), minlength=n * 3 * LEVELS).view(n, 3, LEVELS)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``np.interp`` for a 1-D increasing ``xp`` (constant extrapolation), any-shape ``x``."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    i = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    t = ((x - x0) / (x1 - x0).clamp(min=1e-30)).clamp(0, 1)
    out = f0 + t * (f1 - f0)
    out = torch.where(x <= xp[0], fp[0], out)
    return torch.where(x >= xp[-1], fp[-1], out)


@register_normalizer
class HistMatchNormalizer(Normalizer):
    """Match each channel's histogram to the pooled histogram of the target training images."""

    name = "histmatch"
    description = "per-channel histogram matching to the target system's training distribution"
    data_kinds = ("paired", "unpaired")

    def __init__(self) -> None:
        super().__init__()
        self.reference_counts = torch.ones(3, LEVELS, dtype=torch.float64)  # (3, 256)

    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0, batch_size: int = 256) -> Self:
        y = target_images(data, self.name)
        counts = torch.zeros(3, LEVELS, dtype=torch.float64)
        for s in range(0, len(y), batch_size):
            counts += channel_histograms(y[s:s + batch_size].float().cpu()).sum(0).double()
        self.reference_counts = counts
        self.fitted = True
        return self

    def lookup_tables(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image, per-channel output value of each of the 256 input levels: ``(N, 3, 256)``."""
        n = images.shape[0]
        src = channel_histograms(images).double()
        src_q = src.cumsum(-1) / src.sum(-1, keepdim=True)  # (N, 3, 256)
        ref = self.reference_counts.to(images.device)
        out = torch.empty(n, 3, LEVELS, dtype=torch.float64, device=images.device)
        levels = torch.arange(LEVELS, dtype=torch.float64, device=images.device) / (LEVELS - 1)
        for c in range(3):
            present = ref[c] > 0
            tq = ref[c][present].cumsum(0) / ref[c].sum()
            out[:, c] = interp(src_q[:, c], tq, levels[present])
        return out

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        lut = self.lookup_tables(images).float()  # (N, 3, 256)
        v = images.clamp(0, 1).reshape(n, 3, -1) * (LEVELS - 1)
        lo = v.floor().clamp(max=LEVELS - 2)
        frac = v - lo
        lo = lo.long()
        a = lut.gather(2, lo)
        b = lut.gather(2, lo + 1)
        return (a + frac * (b - a)).reshape(n, 3, h, w)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"reference_counts": self.reference_counts}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        counts = state["reference_counts"].double()
        if bool((counts < 0).any()) or bool((counts.sum(-1) <= 0).any()):
            raise CheckpointError("histmatch: saved reference histogram has negative or all-zero counts; "
                                  "re-fit the model")
        self.reference_counts = counts
