"""Images read on demand (cellbench.data.stream, issue #16 item 3): the same pixels as the in-memory
load, a cache that stays within its bound, a deterministic order whatever the workers, corrupt
files named, and the trainers' batch source drawing identical batches from a streamed set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cellbench.data.cross import Streaming, load_cross
from cellbench.data.folders import LabelledFolder
from cellbench.data.sets import UnpairedSet
from cellbench.data.stream import ImageFiles, LazyImages, file_loader
from cellbench.errors import ImageReadError
from cellbench.io import write_image
from cellbench.train.data import make_source

from .test_cross import _folder


@pytest.fixture
def folder(tmp_path):
    return _folder(tmp_path / "f", {"neutrophil": 14, "basophil": 9}, shapes=((40, 40), (36, 50), (64, 30)))


def _files(root):
    return sorted(p for p in root.rglob("*.png"))


def test_lazy_images_equal_the_in_memory_load(folder):
    want = LabelledFolder(folder).load(None, size=32)
    items = LabelledFolder(folder).select(None)
    lazy = LazyImages([it.path for it in items], size=32)
    assert lazy.shape == want.images.shape and len(lazy) == len(want)
    assert torch.equal(lazy[:], want.images)
    assert torch.equal(lazy[5], want.images[5])
    idx = torch.tensor([7, 0, 7, 3])
    assert torch.equal(lazy[idx], want.images[idx])
    assert torch.equal(lazy[:3, :, 4:20, 8:12], want.images[:3, :, 4:20, 8:12])
    assert torch.equal(torch.cat(list(lazy.batches(4, workers=2))), want.images)


def test_the_cache_stays_within_its_bound(folder):
    files = _files(folder)
    per_image = 3 * 32 * 32
    lazy = LazyImages(files, size=32, cache_mb=5 * per_image / 2**20)  # room for 5 images
    assert lazy.cache_capacity == 5
    for _ in range(3):
        for i in range(len(files)):
            lazy[i]
            assert lazy.cached() <= 5
    assert lazy.misses == 3 * len(files)  # a cyclic scan longer than the cache never hits
    lazy[len(files) - 1]
    assert lazy.hits == 1  # the most recent image is kept
    none = LazyImages(files, size=32, cache_mb=0)
    none[:]
    assert none.cached() == 0


def test_order_is_deterministic_whatever_the_workers(folder):
    files = _files(folder)
    passes = [torch.cat(list(LazyImages(files, size=24, cache_mb=0).batches(5, workers=w))) for w in (0, 1, 2)]
    assert all(torch.equal(passes[0], p) for p in passes[1:])
    got = [d.index for batch in file_loader(ImageFiles(files), batch_size=3, workers=2) for d in batch]
    assert got == list(range(len(files)))


def test_a_corrupt_image_is_named(folder):
    bad = folder / "neutrophil" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files = _files(folder)
    lazy = LazyImages(files, size=32)
    with pytest.raises(ImageReadError, match="zz_broken.png"):
        lazy[:]
    with pytest.raises(ImageReadError, match="zz_broken.png"):
        list(lazy.batches(4, workers=1))
    items = ImageFiles(files, errors="return")
    d = items[files.index(bad)]
    assert d.image is None and "zz_broken.png" in d.error


def test_the_batch_source_draws_identical_batches_from_a_streamed_set(folder, tmp_path):
    y = _folder(tmp_path / "y", {"neutrophil": 8, "basophil": 8}, seed=1)
    mem = load_cross(folder, y, size=32)
    lazy = load_cross(folder, y, size=32, stream=Streaming(cache_mb=0.05))
    assert isinstance(lazy.train.x.images, LazyImages)
    assert lazy.train.x.labels == mem.train.x.labels and lazy.x_test.ids == mem.x_test.ids
    assert torch.equal(lazy.x_test.images[:], mem.x_test.images)
    sources = [make_source(UnpairedSet(d.train.x, d.train.y), paired=None, batch_size=4, crop=16, seed=3,
                           focus=0.5)[0] for d in (mem, lazy)]
    for _ in range(3):
        (a, b), (c, d) = sources[0].next_batch(), sources[1].next_batch()
        assert torch.equal(a, c) and torch.equal(b, d)
    assert all(torch.equal(p, q) for p, q in zip(sources[0].fixed_batch(), sources[1].fixed_batch(), strict=True))


def test_streamed_scale_normalization_matches_the_in_memory_one(tmp_path):
    from .test_cross import _folder as make

    x = make(tmp_path / "x", {"neutrophil": 10}, shapes=((160, 160),), rbc_d=18)
    y = make(tmp_path / "y", {"neutrophil": 10}, shapes=((160, 160),), rbc_d=27, seed=1)
    for scale, (a, b) in (("rbc", (x, y)), ("wbc", (y, x))):  # enlarging, and shrinking (reloaded larger)
        mem = load_cross(a, b, size=64, scale=scale)
        lazy = load_cross(a, b, size=64, scale=scale, stream=Streaming())
        assert lazy.scale_factor == mem.scale_factor and abs(math.log(mem.scale_factor)) > 0.2
        want = (mem.train.x.images.clamp(0, 1) * 255).round() / 255  # what the benchmark stores
        assert torch.equal(lazy.train.x.images[:], want)


def test_an_empty_index_gives_an_empty_stack(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    lazy = LazyImages([tmp_path / "a.png"], size=8)
    assert lazy[torch.tensor([], dtype=torch.long)].shape == (0, 3, 8, 8)


def test_the_streamed_cross_sets_share_one_cache_budget(folder, tmp_path):
    y = _folder(tmp_path / "y", {"neutrophil": 8, "basophil": 8}, seed=1)
    budget = 2.0
    d = load_cross(folder, y, size=32, stream=Streaming(cache_mb=budget))
    sets = (d.train.x, d.train.y, d.val.x, d.val.y, d.x_test, d.y_test)
    per_image = 3 * 32 * 32
    assert sum(s.images.cache_capacity for s in sets) * per_image <= budget * 2**20
    assert d.train.x.images.cache_capacity == int(0.4 * budget * 2**20) // per_image


def test_the_mmap_threshold_is_fixed_on_glibc():
    import platform

    from cellbench.data.stream import fix_mmap_threshold

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert fix_mmap_threshold(1 << 20) is True


def test_batch_conversions_give_the_values_of_to_tensor_and_to_uint8():
    """The transform's batch conversions (planar bytes, one pass each way) change no value:
    ``as_float`` is ``to_tensor``, ``as_uint8`` is ``to_uint8`` (planar), half-way values included."""
    from cellbench.data.stream import as_float, as_uint8, stack_chw
    from cellbench.tensors import to_tensor, to_uint8

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (17, 13, 3), dtype=np.uint8) for _ in range(5)]
    x = as_float(stack_chw(images))
    assert x.is_contiguous() and torch.equal(x, to_tensor(np.stack(images)))
    y = torch.rand(4, 3, 9, 11) * 1.4 - 0.2  # outside [0, 1] too: clipped
    y[0, 0, 0, :4] = torch.tensor([0.5, 1.5, 2.5, 254.5]) / 255  # round half to even, as to_uint8
    want = to_uint8(y).transpose(0, 3, 1, 2)
    assert np.array_equal(as_uint8(y), want)
    kept = y.clone()
    assert np.array_equal(as_uint8(y), want) and torch.equal(y, kept)  # not overwritten unless asked
    assert np.array_equal(as_uint8(y, overwrite=True), want) and not torch.equal(y, kept)


def test_the_heap_policy_is_scoped_on_glibc():
    import platform

    from cellbench.data.stream import heap_reused

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    with heap_reused() as on:
        assert on is True
        x = torch.ones(64, 1 << 18)  # 64 MB from the heap
        assert float(x.sum()) == 64 * (1 << 18)
        del x
