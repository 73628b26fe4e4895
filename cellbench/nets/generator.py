"""The U-Net generator of paper sec. 5.4 (Pix2Pix style, fig. 8).

Encoder block: 5x5 convolution with stride 2 -> batch norm -> LeakyReLU(0.2).
Decoder block: 2x upsampling -> stride-1 transposed convolution -> batch norm -> ReLU; the
upsampling + stride-1 transposed convolution replaces a stride-2 transposed convolution, the
paper's fix for checkerboard artifacts (Odena et al., 2016). Each decoder block's output is
concatenated with the encoder feature map of the same resolution (skip connections).

Width and depth are data (``widths``): the ``paper`` preset has 7 levels and about 20 M
parameters, the ``quick`` preset 4 narrow levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def unet_trunk(encoders: Sequence[nn.Module], decoders: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The U-Net's encoders and decoders on ``x`` (in [-1, 1]): each decoder's output concatenated with
    the encoder features of its resolution, up to the last decoder (before the final upsampling and the
    head). Shared by :class:`UNetGenerator` and the inference engines that replace its decoders
    (:class:`cellbench.nets.engines.SubpixelUNet`)."""
    skips = []
    h = x
    for enc in encoders:
        h = enc(h)
        skips.append(h)
    h = skips.pop()
    for dec in decoders:
        h = torch.cat([dec(h), skips.pop()], dim=1)
    return h


class EncoderBlock(nn.Sequential):
    """``(N, c_in, H, W)`` -> ``(N, c_out, H/2, W/2)``: conv(k, stride 2) -> BN -> LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 5, *, norm: bool = True) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, stride=2, padding=kernel_size // 2, bias=not norm),
            nn.BatchNorm2d(c_out) if norm else nn.Identity(),
            nn.LeakyReLU(0.2, inplace=True),
        )


class DecoderBlock(nn.Sequential):
    """``(N, c_in, H, W)`` -> ``(N, c_out, 2H, 2W)``: upsample x2 -> transposed conv(k, stride 1)
    -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 5, *, upsample: str = "nearest") -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode=upsample),
            nn.ConvTranspose2d(c_in, c_out, kernel_size, stride=1, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class UNetGenerator(nn.Module):
    """U-Net image-to-image generator (paper sec. 5.4, fig. 8).

    Parameters
    ----------
    widths:
        Filters of the encoder blocks, outermost first; ``len(widths)`` levels, so inputs must have
        sides divisible by ``2 ** len(widths)`` (:func:`cellbench.nets.tiling.transform_tiled`
        pads other sizes). The decoder mirrors them.
    kernel_size:
        Encoder convolution size (5 in the paper).
    up_kernel_size:
        Decoder (stride-1 transposed) convolution size.
    input_skip:
        Concatenate the input image to the last decoder block's upsampled features, so the output
        layer sees full-resolution pixels (Pix2Pix's outermost skip starts at half resolution).
    upsample:
        ``"nearest"`` or ``"bilinear"`` interpolation of the decoder's 2x upsampling.
    head_channels:
        0: the last decoder block's transposed convolution is the output layer (Pix2Pix). ``> 0``:
        it is a full decoder block with this many filters (at full resolution, with the input
        image concatenated) followed by a 1x1 output convolution, which gives the per-pixel
        colour mapping nonlinear capacity at full resolution in small presets.
    head_depth:
        Extra 1x1 convolution -> batch norm -> ReLU layers of ``head_channels`` filters between
        the head block and the output convolution (needs ``head_channels > 0``): a per-pixel MLP
        on the U-Net's features and the input colour. A colour map between two microscopes is
        mostly a nonlinear function of the pixel's own colour; one hidden layer of 32 units
        fits it less well than a cubic polynomial, two do better (docs/networks.md). 1x1 layers
        cost a ninth of a 3x3 layer at full resolution.

    Input and output are ``(N, 3, H, W)`` float images in [0, 1]; internally they are scaled
    to [-1, 1] and the last layer is ``tanh``.
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512, 512, 512, 512),
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        kernel_size: int = 5,
        up_kernel_size: int = 5,
        input_skip: bool = True,
        upsample: str = "nearest",
        head_channels: int = 0,
        head_depth: int = 0,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 1:
            raise ValueError("the generator needs at least one level")
        self.widths = widths
        self.input_skip = input_skip
        self.encoders = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.encoders.append(EncoderBlock(c, w, kernel_size))
            c = w
        # decoder j maps level j+1's features (plus skip) up to level j's resolution
        self.decoders = nn.ModuleList()
        for j in range(len(widths) - 1, 0, -1):
            c_in = widths[j] if j == len(widths) - 1 else widths[j] * 2
            self.decoders.append(DecoderBlock(c_in, widths[j - 1], up_kernel_size, upsample=upsample))
        c_last = widths[0] * (2 if len(widths) > 1 else 1)
        self.up = nn.Upsample(scale_factor=2, mode=upsample)
        c_head = c_last + (in_channels if input_skip else 0)
        if head_depth and head_channels <= 0:
            raise ValueError("head_depth needs head_channels > 0")
        if head_channels > 0:  # a full-resolution decoder block, [1x1 layers,] a 1x1 output convolution
            layers: list[nn.Module] = [
                nn.ConvTranspose2d(
                    c_head, head_channels, up_kernel_size, stride=1, padding=up_kernel_size // 2, bias=False
                ),
                nn.BatchNorm2d(head_channels),
                nn.ReLU(inplace=True),
            ]
            for _ in range(int(head_depth)):
                layers += [
                    nn.Conv2d(head_channels, head_channels, 1, bias=False),
                    nn.BatchNorm2d(head_channels),
                    nn.ReLU(inplace=True),
                ]
            self.head = nn.Sequential(*layers, nn.Conv2d(head_channels, out_channels, 1))
        else:  # Pix2Pix: the last block is the output layer
            self.head = nn.ConvTranspose2d(
                c_head, out_channels, up_kernel_size, stride=1, padding=up_kernel_size // 2
            )

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (``2 ** levels``)."""
        return 2 ** len(self.widths)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, 3, H, W)`` in [0, 1]."""
        x = images * 2.0 - 1.0
        h = self.up(unet_trunk(self.encoders, self.decoders, x))
        if self.input_skip:
            h = torch.cat([h, x], dim=1)
        return (torch.tanh(self.head(h)) + 1.0) * 0.5
