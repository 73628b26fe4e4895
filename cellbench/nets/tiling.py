"""Inference on images of any size: padding to the network's multiple and overlapping tiles.

Images no larger than ``tile`` go through the (fully convolutional) generator in one piece,
reflect-padded to a multiple of ``2 ** levels``. Larger ones are cut into ``tile x tile`` tiles
overlapping by ``overlap`` pixels; each tile's output is weighted by a separable raised-cosine
window that falls to near zero at the tile's edges, and the weighted sum is divided by the summed
weights, so neighbouring tiles cross-fade and no seam is visible.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

Net = Callable[[torch.Tensor], torch.Tensor]


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad ``(N, C, H, W)`` at the bottom/right to sides divisible by ``multiple``."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return images, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(images, (0, pw, 0, ph), mode=mode), (h, w)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blend_window(tile: int, overlap: int, *, device=None) -> torch.Tensor:
    """1-D weights ``(tile,)``: a raised-cosine ramp over ``overlap`` pixels at both ends, 1 inside."""
    i = torch.arange(tile, dtype=torch.float32, device=device)
    if overlap <= 0:
        return torch.ones(tile, device=device)
    ramp = torch.clamp(torch.minimum(i + 0.5, tile - i - 0.5) / overlap, max=1.0)
    return 0.5 - 0.5 * torch.cos(math.pi * ramp)


def transform_tiled(
    net: Net,
    images: torch.Tensor,
    *,
    tile: int = 256,
    overlap: int = 64,
    multiple: int = 1,
    batch_size: int = 8,
) -> torch.Tensor:
    """Apply ``net`` (``(n, 3, t, t) -> (n, 3, t, t)``) to ``images`` ``(N, 3, H, W)`` of any size.

    Parameters
    ----------
    tile:
        Tile side (the training size is a good choice); rounded down to a multiple of ``multiple``.
    overlap:
        Pixels shared by neighbouring tiles, cross-faded with :func:`blend_window`.
    multiple:
        The network's required divisor of the input sides (``2 ** levels``).
    batch_size:
        Tiles per forward pass.

    Returns
    -------
    ``(N, 3, H, W)`` output, same dtype as ``net``'s output.
    """
    tile = max(multiple, tile // multiple * multiple)
    padded, (h, w) = pad_to_multiple(images, multiple)
    ph, pw = padded.shape[-2:]
    if ph <= tile and pw <= tile:
        outs = [net(padded[i : i + batch_size]) for i in range(0, len(padded), batch_size)]
        return torch.cat(outs)[..., :h, :w]
    overlap = min(overlap, tile // 2)
    stride = tile - overlap
    th, tw = min(tile, ph), min(tile, pw)
    ys, xs = _starts(ph, th, stride), _starts(pw, tw, stride)
    wy = blend_window(th, overlap if len(ys) > 1 else 0, device=images.device)
    wx = blend_window(tw, overlap if len(xs) > 1 else 0, device=images.device)
    weight = (wy[:, None] * wx[None, :])[None, None]
    out = None
    norm = torch.zeros(1, 1, ph, pw, device=images.device)
    positions = [(y, x) for y in ys for x in xs]
    for y, x in positions:
        norm[..., y : y + th, x : x + tw] += weight
    for n in range(len(padded)):
        for k in range(0, len(positions), batch_size):
            chunk = positions[k : k + batch_size]
            tiles = torch.stack([padded[n, :, y : y + th, x : x + tw] for y, x in chunk])
            res = net(tiles).float().to(images.device)  # a GPU net may be given CPU images
            if out is None:
                out = torch.zeros(len(padded), res.shape[1], ph, pw, device=images.device)
            for (y, x), r in zip(chunk, res, strict=True):
                out[n, :, y : y + th, x : x + tw] += r * weight[0]
    return (out / norm)[..., :h, :w]
