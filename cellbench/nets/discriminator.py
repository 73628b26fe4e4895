"""The 70x70 PatchGAN discriminator of paper sec. 5.4 (fig. 9).

Five blocks of 4x4 convolutions with strides 2, 2, 2, 1, 1; batch norm in blocks 2-4 (not in the
first or the last); LeakyReLU(0.2) after blocks 1-4 and a sigmoid after the last, then the mean
over patches. With these strides every output patch sees 70x70 input pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``(N, 3, H, W)`` in [0, 1] -> ``D(y)`` ``(N,)``, the mean patch probability of "real".

    Parameters
    ----------
    widths:
        Filters of the first four blocks (the fifth has one). ``(128, 256, 512, 1024)`` gives the
        paper's ~11 M parameters.
    strides:
        Strides of the five blocks (2, 2, 2, 1, 1 in the paper).
    kernel_size:
        4 in the paper.
    """

    def __init__(
        self,
        widths: Sequence[int] = (128, 256, 512, 1024),
        *,
        in_channels: int = 3,
        strides: Sequence[int] = (2, 2, 2, 1, 1),
        kernel_size: int = 4,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        strides = [int(s) for s in strides]
        if len(strides) != len(widths) + 1:
            raise ValueError(
                f"need one stride per block: {len(widths) + 1} blocks, got {len(strides)} strides"
            )
        self.strides = strides
        self.kernel_size = kernel_size
        layers: list[nn.Module] = []
        c = in_channels
        for i, (w, s) in enumerate(zip(widths, strides[:-1], strict=True)):
            norm = i > 0  # no batch norm in the first block
            layers += [
                nn.Conv2d(c, w, kernel_size, stride=s, padding=1, bias=not norm),
                nn.BatchNorm2d(w) if norm else nn.Identity(),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c = w
        layers.append(nn.Conv2d(c, 1, kernel_size, stride=strides[-1], padding=1))  # no batch norm
        self.body = nn.Sequential(*layers)

    @property
    def receptive_field(self) -> int:
        """Side of the input square each output patch sees (70 for the paper's layout)."""
        rf, jump = 1, 1
        for s in self.strides:
            rf += (self.kernel_size - 1) * jump
            jump *= s
        return rf

    def patch_logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> pre-sigmoid patch scores ``(N, 1, h, w)``."""
        return self.body(images * 2.0 - 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``D(images)``: sigmoid, then the mean over patches, ``(N,)`` in (0, 1)."""
        return torch.sigmoid(self.patch_logits(images)).flatten(1).mean(1)


def log_mean_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """``log(mean_patches(sigmoid(logits)))`` per image ``(N,)``, computed stably.

    ``log D`` for eq. (1)/(2) where ``D`` is the mean patch probability; ``log(1 - D)`` is
    ``log_mean_sigmoid(-logits)``.
    """
    flat = F.logsigmoid(logits.float()).flatten(1)
    return torch.logsumexp(flat, dim=1) - math.log(flat.shape[1])
