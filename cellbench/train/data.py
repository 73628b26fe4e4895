"""Training batches: seeded random crops and 90-degree rotations (paper sec. 5.1) of in-memory sets.

A batch source owns a CPU :class:`torch.Generator`; its state is part of every checkpoint, so a
resumed run draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import torch

from ..data.sets import PairedSet, UnpairedSet
from ..errors import ConfigError

log = logging.getLogger(__name__)


FOCUS_BLOCK = 8


def content_weights(images: torch.Tensor, block: int = FOCUS_BLOCK) -> torch.Tensor:
    """``(N, 3, H, W)`` -> ``(N, H // block * W // block)``: how much stained content each
    ``block x block`` cell holds, for :class:`BatchSource`'s ``focus`` sampling.

    The weight is the darkening against the image's own background, ``max(0, 1 - gray / q)``
    with ``q`` the 95th percentile of the gray level (empty slide is the brightest large area
    in bright-field images), averaged over the cell. No labels or masks are needed, so it works
    for any bright-field data; dense nuclei weigh most, red cells less, empty slide nothing.
    """
    out = []
    for i in range(0, len(images), 64):  # chunks bound the float copy of large uint8 stacks
        gray = images[i : i + 64].float().mean(dim=1, keepdim=True)
        flat = gray.flatten(1)
        k = max(1, int(round(0.95 * flat.shape[1])))
        q = flat.kthvalue(k, dim=1).values.clamp_min(1e-3)[:, None, None, None]
        dark = (1.0 - gray / q).clamp_min(0.0)
        out.append(torch.nn.functional.avg_pool2d(dark, block).flatten(1))
    return torch.cat(out)


def _with_row(table: torch.Tensor, i: int, row: torch.Tensor) -> torch.Tensor:
    """``table`` with row ``i`` replaced in place by ``row`` (``(1, K)``), or appended when ``i == len(table)``."""
    if i == len(table):
        return torch.cat([table, row])
    table[i] = row[0]
    return table


def _augment(images: torch.Tensor, tops, lefts, ks, crop: int) -> torch.Tensor:
    out = []
    for img, t, l, k in zip(images, tops, lefts, ks, strict=True):
        patch = img[:, t : t + crop, l : l + crop]
        out.append(torch.rot90(patch, int(k), dims=(1, 2)))
    return torch.stack(out)


class BatchSource:
    """Seeded batches ``(x, y)`` of ``(B, 3, crop, crop)`` float images in [0, 1].

    Parameters
    ----------
    x, y:
        ``(N, 3, H, W)`` and ``(M, 3, H, W)`` image stacks. ``paired=True`` needs ``N == M`` and
        takes the same crop of ``x[i]`` and ``y[i]``; otherwise x and y are drawn independently.
    batch_size, crop:
        Batch size and crop side (``None``: whole images; they must be square).
    seed:
        Seeds the source's own generator (nothing global is touched).
    rotate:
        Rotate each sample by a random multiple of 90 degrees (paper sec. 5.1).
    focus:
        Fraction of the crops centred on stained content (a block drawn with probability
        proportional to :func:`content_weights`) instead of uniformly at random. Small crops of
        blood smears are mostly empty slide or red cells; ``focus`` spends more of a short
        training run on the white cells that the benchmark scores. 0 (the paper) draws every
        crop uniformly.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        paired: bool,
        batch_size: int,
        crop: int | None,
        seed: int,
        rotate: bool = True,
        focus: float = 0.0,
    ) -> None:
        if len(x) == 0 or len(y) == 0:
            raise ConfigError("the training data is empty")
        if paired and x.shape != y.shape:
            raise ConfigError(
                f"paired training needs equal x and y shapes, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        h, w = min(x.shape[-2], y.shape[-2]), min(x.shape[-1], y.shape[-1])
        if crop is None or crop <= 0:
            if h != w or x.shape[-2:] != y.shape[-2:]:
                raise ConfigError(f"training images are {h}x{w}: set crop_size (square crops are needed)")
            crop = h
        if crop > min(h, w):
            raise ConfigError(
                f"crop_size {crop} is larger than the training images ({h}x{w}); "
                f"use --set crop_size={min(h, w)} or larger images"
            )
        if not 0.0 <= float(focus) <= 1.0:
            raise ConfigError(f"crop_focus must be between 0 and 1, got {focus}")
        self.x, self.y = x, y
        self.paired, self.batch_size, self.crop, self.rotate = paired, batch_size, crop, rotate
        self.focus = float(focus) if crop < min(h, w) else 0.0
        self.wx = content_weights(x) if self.focus else None
        self.wy = content_weights(y) if self.focus and not paired else None
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return len(self.x)

    def _draw(self, images: torch.Tensor, idx: torch.Tensor, g: torch.Generator, weights=None):
        b = len(idx)
        h, w = images.shape[-2:]
        tops = torch.randint(0, h - self.crop + 1, (b,), generator=g).tolist()
        lefts = torch.randint(0, w - self.crop + 1, (b,), generator=g).tolist()
        ks = torch.randint(0, 4, (b,), generator=g).tolist() if self.rotate else [0] * b
        if self.focus and weights is not None:
            focused = (torch.rand(b, generator=g) < self.focus).tolist()
            wts = weights[idx] + 1e-6  # an empty image falls back to uniform cells
            cells = torch.multinomial(wts, 1, generator=g)[:, 0].tolist()
            jitter = torch.randint(0, FOCUS_BLOCK, (b, 2), generator=g).tolist()
            per_row = w // FOCUS_BLOCK
            for i in range(b):
                if focused[i]:
                    cy = cells[i] // per_row * FOCUS_BLOCK + jitter[i][0]
                    cx = cells[i] % per_row * FOCUS_BLOCK + jitter[i][1]
                    tops[i] = min(max(cy - self.crop // 2, 0), h - self.crop)
                    lefts[i] = min(max(cx - self.crop // 2, 0), w - self.crop)
        return tops, lefts, ks

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        g, b = self.generator, self.batch_size
        ix = torch.randint(0, len(self.x), (b,), generator=g)
        tops, lefts, ks = self._draw(self.x, ix, g, self.wx)
        x = _augment(self.x[ix], tops, lefts, ks, self.crop)
        if self.paired:
            y = _augment(self.y[ix], tops, lefts, ks, self.crop)
        else:
            iy = torch.randint(0, len(self.y), (b,), generator=g)
            y = _augment(self.y[iy], *self._draw(self.y, iy, g, self.wy), self.crop)
        return x.float(), y.float()

    def fixed_batch(self, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` images, centre-cropped to a multiple of the crop size up to 128 pixels
        (for sample grids; draws no random numbers)."""
        h, w = min(self.x.shape[-2], self.y.shape[-2]), min(self.x.shape[-1], self.y.shape[-1])
        side = max(self.crop, min(128, h, w) // self.crop * self.crop)

        def centre(t: torch.Tensor) -> torch.Tensor:
            top, left = (t.shape[-2] - side) // 2, (t.shape[-1] - side) // 2
            return t[:n, :, top : top + side, left : left + side].float()

        return centre(self.x), centre(self.y)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


class StreamingSource(BatchSource):
    """Batches from a stream of pairs: :class:`PairedSet` chunks or ``{"x": (3,H,W), "y": (3,H,W)}``
    items such as those of :class:`cellbench.sim.SimulatedPairs`.

    Keeps a pool of the most recent ``pool_size`` pairs; each call to :meth:`next_batch` first
    pulls ``refresh`` new pairs from the stream, so the pool turns over during training. The pool
    is not part of checkpoints: a resumed streaming run continues with fresh data, not the
    identical batches (in-memory sets resume exactly).
    """

    def __init__(
        self,
        stream: Iterable,
        *,
        paired: bool,
        batch_size: int,
        crop: int | None,
        seed: int,
        pool_size: int = 256,
        refresh: int = 1,
        rotate: bool = True,
        focus: float = 0.0,
    ) -> None:
        self._stream: Iterator[PairedSet] = iter(stream)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        first = self._pull(pool_size)
        super().__init__(
            first[0], first[1], paired=paired, batch_size=batch_size, crop=crop, seed=seed, rotate=rotate,
            focus=focus,
        )
        self.pool_size, self.refresh, self._slot = pool_size, refresh, 0

    def _pull(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self._pending) < n:
            try:
                chunk = next(self._stream)
            except StopIteration:
                break
            if isinstance(chunk, dict):  # one item of cellbench.sim.SimulatedPairs
                self._pending.append((chunk["x"], chunk["y"]))
            else:
                self._pending += [(chunk.x[i], chunk.y[i]) for i in range(len(chunk))]
        take, self._pending = self._pending[:n], self._pending[n:]
        if not take:
            raise ConfigError("the training stream yielded no pairs")
        return torch.stack([t[0] for t in take]), torch.stack([t[1] for t in take])

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.refresh > 0:
            try:
                nx, ny = self._pull(self.refresh)
                for a, b in zip(nx, ny, strict=True):
                    if len(self.x) < self.pool_size:
                        slot = len(self.x)
                        self.x, self.y = torch.cat([self.x, a[None]]), torch.cat([self.y, b[None]])
                    else:
                        slot, self._slot = self._slot, (self._slot + 1) % self.pool_size
                        self.x[slot], self.y[slot] = a, b
                    if self.wx is not None:
                        self.wx = _with_row(self.wx, slot, content_weights(a[None]))
                    if self.wy is not None:
                        self.wy = _with_row(self.wy, slot, content_weights(b[None]))
            except ConfigError:
                self.refresh = 0  # the stream ended: keep training on the pool
        return super().next_batch()


def make_source(
    data,
    *,
    paired: bool | None,
    batch_size: int,
    crop: int | None,
    seed: int,
    rotate: bool = True,
    focus: float = 0.0,
    focus_unpaired: float | None = None,
) -> tuple[BatchSource, bool]:
    """A :class:`BatchSource` for a PairedSet, UnpairedSet or a stream of pairs, and whether it is paired.

    ``focus`` is :class:`BatchSource`'s content focus; ``focus_unpaired`` replaces it when the
    source is unpaired (``None``: the same).
    """

    def focus_for(is_paired: bool) -> float:
        return focus if is_paired or focus_unpaired is None else focus_unpaired

    if isinstance(data, PairedSet):
        if len(data) == 0:
            raise ConfigError("the training split is empty")
        is_paired = True if paired is None else paired
        return BatchSource(
            data.x, data.y, paired=is_paired, batch_size=batch_size, crop=crop, seed=seed, rotate=rotate,
            focus=focus_for(is_paired),
        ), is_paired
    if isinstance(data, UnpairedSet):
        if paired:
            raise ConfigError(
                "paired training needs registered pairs; this data is unpaired "
                '(use --set mode="unpaired" or mode="auto")'
            )
        return BatchSource(
            data.x.images,
            data.y.images,
            paired=False,
            batch_size=batch_size,
            crop=crop,
            seed=seed,
            rotate=rotate,
            focus=focus_for(False),
        ), False
    if isinstance(data, Iterable):
        is_paired = True if paired is None else paired
        return StreamingSource(
            data, paired=is_paired, batch_size=batch_size, crop=crop, seed=seed, rotate=rotate,
            focus=focus_for(is_paired),
        ), is_paired
    raise ConfigError(
        f"cannot train on {type(data).__name__}; pass a PairedSet, an UnpairedSet or a stream of PairedSets"
    )
