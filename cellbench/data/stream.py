"""Images read from disk on demand, through a bounded pipeline, instead of whole in-memory stacks.

Two pieces, both plain :mod:`torch.utils.data` datasets:

* :class:`ImageFiles` -- ``files[i]`` decoded (:func:`cellbench.io.read_image`), optionally
  centre cropped/padded to ``size``; an unreadable file either raises
  :class:`~cellbench.errors.ImageReadError` naming it or comes back as a :class:`Decoded` with
  the message (``errors="return"``, what ``cellbench transform`` uses to report and skip it).
  Fed to a :class:`torch.utils.data.DataLoader` with decoding workers and a bounded prefetch
  (:func:`file_loader`), memory holds ``workers x prefetch x batch`` images whatever the
  number of files.
* :class:`LazyImages` -- a stand-in for an ``(N, 3, size, size)`` float image stack that decodes
  on indexing and keeps at most ``cache_mb`` of decoded images (``uint8``, least recently used
  evicted). It supports what the trainers' batch sources and the streaming evaluation do with an
  image stack: ``len``, ``shape``, integer/slice/index-tensor indexing (also ``t[:n, :, a:b, c:d]``)
  and :meth:`LazyImages.batches` (in order, through a DataLoader). A :class:`LabelledSet` may hold
  one in place of a tensor (:func:`lazy_labelled`).

Order is deterministic: ``batches`` yields the images in index order whatever the number of
workers (the DataLoader keeps order), and indexing returns exactly what ``read_image`` +
``center_crop_or_pad`` + :func:`cellbench.tensors.to_tensor` give, so a streamed set is
bit-identical to the in-memory one (``LabelledFolder.load``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, ImageReadError
from ..io import read_image
from ..tensors import center_crop_or_pad, to_tensor

__all__ = ["Decoded", "ImageFiles", "SizeGroups", "group_by_size", "file_loader", "default_workers", "LazyImages",
           "lazy_labelled", "fix_mmap_threshold", "reuse_heap", "heap_reused", "stack_chw", "as_float", "as_uint8"]


@dataclass
class Decoded:
    """One decoded file: ``image`` ``uint8 (H, W, 3)``, or ``None`` with the reason in ``error``."""

    index: int
    path: str
    image: np.ndarray | None
    error: str | None = None


class ImageFiles(Dataset):
    """``files[i]`` -> :class:`Decoded` (see the module docstring).

    Parameters
    ----------
    files:
        Image paths, in the order items are wanted.
    size:
        Centre crop / reflect-pad every image to ``size x size`` (``None``: as stored).
    rescale:
        ``(factor, load_size)``: crop/pad to ``load_size`` first, then zoom by ``factor`` and
        crop/pad to ``size`` (:func:`cellbench.data.scale.rescale_images`; the cross track's
        ``--scale``), rounded back to ``uint8``.
    errors:
        ``"raise"``: an unreadable file raises :class:`ImageReadError` naming it; ``"return"``: the
        item carries the message and no image.
    """

    def __init__(self, files: Sequence[str | os.PathLike], *, size: int | None = None,
                 rescale: tuple[float, int] | None = None, errors: str = "raise") -> None:
        if errors not in ("raise", "return"):
            raise ConfigError(f"errors must be 'raise' or 'return', got {errors!r}")
        if rescale is not None and size is None:
            raise ConfigError("rescale needs a size")
        self.files = [str(f) for f in files]  # strings pickle small and fast to the workers
        self.size, self.rescale, self.errors = size, rescale, errors

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Decoded:
        path = self.files[i]
        try:
            image = read_image(path)
        except ImageReadError as exc:
            if self.errors == "raise":
                raise
            return Decoded(i, path, None, str(exc))
        if self.rescale is not None:
            from .scale import rescale_images

            factor, load_size = self.rescale
            t = to_tensor(center_crop_or_pad(image, load_size))
            t = rescale_images(t, factor, self.size).clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)
            image = t[0].permute(1, 2, 0).contiguous().numpy()
        elif self.size is not None:
            image = np.ascontiguousarray(center_crop_or_pad(image, self.size))
        return Decoded(i, path, image)


def _as_list(batch: list) -> list:
    return batch


def stack_chw(images: Sequence[np.ndarray]) -> torch.Tensor:
    """``uint8 (H, W, 3)`` images of one size -> one ``uint8 (N, 3, H, W)`` tensor, a planar *view* of
    the stacked pixels (channels-last strides; nothing reordered yet): :func:`as_float` reorders and
    converts in one pass."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def as_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8 (N, 3, H, W)`` (any strides) -> contiguous ``float32`` in [0, 1]: the same values as
    :func:`cellbench.tensors.to_tensor` (``x / 255`` rounded once), in one converting copy and one
    division (measured 4x faster than converting the interleaved stack and reordering the floats)."""
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    return out.copy_(images).div_(255.0)


def as_uint8(images: torch.Tensor, *, overwrite: bool = False) -> np.ndarray:
    """``float (N, 3, H, W)`` in [0, 1] -> planar ``uint8 (N, 3, H, W)`` (contiguous): the same values
    as :func:`cellbench.tensors.to_uint8` (clipped, ``round(255 x)`` half to even) without
    interleaving them: :func:`cellbench.io.write_planes` lets PIL merge the planes (measured 4x
    faster than a strided copy to ``(N, H, W, 3)``).

    ``overwrite``: ``images`` (a float32 CPU tensor not needed afterwards, e.g. a normalizer's output)
    serves as the scratch buffer instead of a new one.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W), got {tuple(images.shape)}")
    t = images.detach()
    if overwrite and t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous():
        t = t.clamp_(0.0, 1.0)
    else:
        t = t.float().clamp(0.0, 1.0).contiguous()
    return t.mul_(255.0).round_().to(torch.uint8).cpu().numpy()


@dataclass
class SizeGroups:
    """A batch of :class:`Decoded` items regrouped by image size: ``groups`` of ``(indices, uint8
    (n, 3, H, W) tensor)`` (:func:`as_float` makes a normalizer's input of it) and the ``failed``
    ``(path, reason)``."""

    groups: list[tuple[list[int], torch.Tensor]]
    failed: list[tuple[str, str]]


def group_by_size(batch: list[Decoded]) -> SizeGroups:
    """Collate function: stack the images of each size as ``uint8 (n, 3, H, W)`` tensors (:func:`stack_chw`).

    Kept as bytes: a decoding worker hands a batch to the main process through shared memory, a
    quarter of the size of float pixels; the conversion to float is one pass over the batch
    (:func:`as_float`) where it is used."""
    by_size: dict[tuple, list[Decoded]] = {}
    failed = []
    for d in batch:
        if d.image is None:
            failed.append((d.path, d.error or "unreadable"))
        else:
            by_size.setdefault(d.image.shape, []).append(d)
    return SizeGroups([([d.index for d in ds], stack_chw([d.image for d in ds])) for ds in by_size.values()],
                      failed)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def fix_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Serve every C allocation of ``nbytes`` or more from its own ``mmap`` (returned to the system when
    freed) for the rest of this process; True when set (glibc only).

    glibc raises this threshold after the first large free (up to 32 MB), so a long stream of
    batch-sized temporaries (normalizer intermediates, decoded images, tensors shared with the
    decoding workers) is then carved out of the heaps, which fragment and never shrink: the
    ``cellbench transform`` of 4,000 320-px JPEGs with ``hm`` reached 2.6 GB RSS in the main process
    (0.65 GB for 500 images with the threshold fixed, 0.88 GB without). Setting it explicitly
    turns the adjustment off. Forked workers inherit it.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return False


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # malloc.h


def reuse_heap(trim_bytes: int = 256 << 20) -> bool:
    """Serve every C allocation of this process from the heap, reusing freed blocks, and keep up to
    ``trim_bytes`` of free memory at its top; True when set (glibc only). For a process that runs
    the same batch-sized work over and over on one thread (a ``cellbench transform`` worker).

    Above glibc's mmap threshold (at most 32 MB) every allocation is a fresh ``mmap`` whose pages
    fault in (and are zeroed) on first touch, and a normalizer's batch intermediates are that large
    (``hm`` on 16 320-px images: 78 MB): measured on one core, ``hm`` spent 13.5 ms per image with
    the threshold at 1 MiB (2,200 page faults per image) and 9.1 ms with every block reused from the
    heap (none); ``poly`` 22.5 ms and 13.0 ms. The price is memory: the heap keeps its high-water
    mark (one batch's intermediates), which a long run does not raise as the work repeats; the
    ``transform`` benchmark (``benchmarks/transform_scale.py``) watches it. Not for a process that
    keeps long-lived objects among the temporaries (see :func:`fix_mmap_threshold`).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, int(trim_bytes)))
    except (OSError, AttributeError):  # not glibc
        return False


_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults


@contextlib.contextmanager
def heap_reused(trim_bytes: int = 256 << 20) -> Iterator[bool]:
    """:func:`reuse_heap` for a block of this process; afterwards allocations are ``mmap``-ed again
    above the threshold, glibc's trim threshold is back to its default and the free heap is given
    back to the system (``malloc_trim``). Yields whether the policy was set (glibc only)."""
    import ctypes
    import ctypes.util

    on = reuse_heap(trim_bytes)
    try:
        yield on
    finally:
        if on:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
            libc.malloc_trim(0)


def default_workers() -> int:
    """Decoding worker processes: one per usable core but one (the main process transforms), 1..4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores - 1))


def file_loader(dataset: Dataset, *, batch_size: int, workers: int | None = None, prefetch: int = 2,
                indices: Sequence[int] | None = None, collate=_as_list, worker_init_fn=None,
                batches: Sequence[Sequence[int]] | None = None) -> DataLoader:
    """A DataLoader yielding lists of ``batch_size`` items of ``dataset`` in order (or what ``collate``
    makes of each list, e.g. :func:`group_by_size`; the collate runs in the worker).

    ``workers`` decoding processes (``None``: :func:`default_workers`; 0 decodes in this
    process), each at most ``prefetch`` batches ahead, so at most ``workers x prefetch`` batches
    wait in memory. ``indices`` restricts (and orders) the items read; ``batches`` (lists of item
    indices) gives the batches themselves instead. ``worker_init_fn(worker_id)`` runs first in each
    worker.
    """
    if batch_size < 1:
        raise ConfigError("batch size must be at least 1")
    if prefetch < 1:
        raise ConfigError("prefetch must be at least 1")
    n = default_workers() if workers is None else int(workers)
    if n < 0:
        raise ConfigError("workers must be 0 or more")
    kwargs: dict[str, Any] = {"prefetch_factor": prefetch, "worker_init_fn": worker_init_fn} if n > 0 else {}
    if batches is not None:
        if indices is not None:
            raise ConfigError("give indices or batches, not both")
        return DataLoader(dataset, batch_sampler=[list(b) for b in batches], num_workers=n, collate_fn=collate,
                          **kwargs)
    sampler = list(range(len(dataset))) if indices is None else list(indices)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=n, collate_fn=collate,
                      **kwargs)


class LazyImages:
    """An ``(N, 3, size, size)`` float image stack in [0, 1] decoded from ``files`` on demand.

    Parameters
    ----------
    files:
        One path per image.
    size:
        Every image is centre cropped / reflect padded to ``size x size``.
    cache_mb:
        Decoded images kept (as ``uint8``; least recently used evicted); 0 keeps none. The bound
        holds whatever ``len(files)`` is.
    workers:
        Decoding processes of :meth:`batches` (``None``: :func:`default_workers`).
    rescale:
        ``(factor, load_size)`` of :class:`ImageFiles` (the cross track's ``--scale``).

    Unreadable files raise :class:`ImageReadError` naming the file.
    """

    def __init__(self, files: Sequence[str | os.PathLike], *, size: int, cache_mb: float = 512.0,
                 workers: int | None = None, rescale: tuple[float, int] | None = None) -> None:
        if size < 1:
            raise ConfigError(f"size must be at least 1, got {size}")
        if cache_mb < 0:
            raise ConfigError(f"cache_mb must be 0 or more, got {cache_mb}")
        self.files = [str(f) for f in files]
        self.size, self.workers = int(size), workers
        self._dataset = ImageFiles(self.files, size=self.size, rescale=rescale)
        # the cache: image index -> slot of one preallocated uint8 slab (pages are touched as slots
        # fill). One block instead of one allocation per image: small long-lived arrays scattered
        # among the decoder's freed buffers fragment the C heap (measured: RSS grew by ~2 MB per
        # cached 196 kB image, 5.6 GB for a 0.4 GB cache)
        self._cache: OrderedDict[int, int] = OrderedDict()
        self._capacity = int(cache_mb * 2**20) // (3 * self.size * self.size)
        self._slab: np.ndarray | None = None
        self._free: list[int] = []
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    # -- the tensor-like surface --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), 3, self.size, self.size))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def cache_capacity(self) -> int:
        """How many decoded images the cache holds at most."""
        return self._capacity

    def cached(self) -> int:
        return len(self._cache)

    def __getitem__(self, key: Any) -> torch.Tensor:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} images")
            out = self._tensor(np.stack([self._get(i)]))[0]
        else:
            idx = self._indices(key)
            out = self._tensor(np.stack([self._get(i) for i in idx]) if idx
                               else np.zeros((0, self.size, self.size, 3), np.uint8))
        return out[(slice(None), *rest)] if rest and out.ndim == 4 else (out[rest] if rest else out)

    def float(self) -> torch.Tensor:  # noqa: A003 - the tensor method name
        """Every image as one tensor (what a caller that needs the whole stack gets; N x 3 x size^2 floats)."""
        return self[:]

    def _indices(self, key: Any) -> list[int]:
        if isinstance(key, slice):
            return list(range(len(self)))[key]
        if isinstance(key, torch.Tensor):
            key = key.tolist() if key.dtype != torch.bool else torch.nonzero(key)[:, 0].tolist()
        elif isinstance(key, np.ndarray):
            key = key.tolist() if key.dtype != bool else np.flatnonzero(key).tolist()
        out = []
        for k in key:
            i = int(k) + (len(self) if k < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {k} out of range for {len(self)} images")
            out.append(i)
        return out

    @staticmethod
    def _tensor(stack: np.ndarray) -> torch.Tensor:
        return as_float(torch.from_numpy(stack).permute(0, 3, 1, 2))

    def _get(self, i: int) -> np.ndarray:
        with self._lock:
            slot = self._cache.get(i)
            if slot is not None:
                self._cache.move_to_end(i)
                self.hits += 1
                assert self._slab is not None
                return self._slab[slot].copy()  # a copy: the slot may be reused before the caller is done
        image = self._dataset[i].image
        assert image is not None  # errors="raise"
        self._remember(i, image)
        return image

    def _remember(self, i: int, image: np.ndarray) -> None:
        with self._lock:
            self.misses += 1
            if self._capacity <= 0:
                return
            if i in self._cache:
                self._cache.move_to_end(i)
                return
            if self._slab is None:
                self._slab = np.empty((self._capacity, self.size, self.size, 3), np.uint8)
                self._free = list(range(self._capacity - 1, -1, -1))
            if not self._free:
                self._free.append(self._cache.popitem(last=False)[1])
            slot = self._free.pop()
            self._slab[slot] = image
            self._cache[i] = slot

    # -- in-order streaming -------------------------------------------------------------------------
    def batches(self, batch_size: int = 64, *, workers: int | None = None) -> Iterator[torch.Tensor]:
        """Every image in index order, ``batch_size`` at a time, as float ``(B, 3, size, size)``.

        Decoded by a DataLoader (``workers`` processes, 2 batches of prefetch each); cached images
        are not decoded again, and decoded ones enter the cache.
        """
        w = self.workers if workers is None else workers
        for start in range(0, len(self), batch_size * 8):  # blocks: cached images skip the loader
            block = list(range(start, min(start + batch_size * 8, len(self))))
            missing = [i for i in block if i not in self._cache]
            got: dict[int, np.ndarray] = {}
            if missing:
                nw = 0 if len(missing) < 2 * batch_size else w
                for part in file_loader(self._dataset, batch_size=batch_size, workers=nw, indices=missing):
                    for d in part:
                        got[d.index] = d.image
                        self._remember(d.index, d.image)
            for b in range(0, len(block), batch_size):
                ids = block[b : b + batch_size]
                yield self._tensor(np.stack([got[i] if i in got else self._get(i) for i in ids]))


def lazy_labelled(files: Sequence[str | os.PathLike], labels: Sequence[str], ids: Sequence[str], *, size: int,
                  cache_mb: float = 512.0, workers: int | None = None, rescale: tuple[float, int] | None = None):
    """A :class:`~cellbench.data.sets.LabelledSet` whose ``images`` is a :class:`LazyImages`."""
    from .sets import LabelledSet

    images = LazyImages(files, size=size, cache_mb=cache_mb, workers=workers, rescale=rescale)
    return LabelledSet(images, list(labels), list(ids))  # type: ignore[arg-type]

