"""Cross-system loading: class bookkeeping, tiny classes, mixed sizes, external X test folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellbench.data.cross import load_cross
from cellbench.errors import DatasetError
from cellbench.io import write_image

from .test_scale import smear


def _folder(root, counts: dict[str, int], *, shapes=((40, 40),), seed=0, rbc_d=None):
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        for i in range(n):
            h, w = shapes[i % len(shapes)]
            if rbc_d is None:
                im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            else:
                im = (smear(h, rbc_d, rbc_d * 1.7, rng) * 255).round().astype(np.uint8)
            write_image(root / cls / f"{cls}_{i}.png", im)
    return root


def test_classes_tiny_and_mixed_sizes(tmp_path):
    x = _folder(tmp_path / "x", {"basophil": 12, "Neutrophils": 20, "monocyte": 4, "platelet": 10},
                shapes=((40, 40), (36, 50), (64, 30)))
    y = _folder(tmp_path / "y", {"basophil": 15, "neutrophil": 20, "monocyte": 12, "lymphocyte": 7}, seed=1)
    d = load_cross(x, y, size=32)
    assert d.shared_classes == ["basophil", "monocyte", "neutrophil"]
    assert d.x_only == ["platelet"] and d.y_only == ["lymphocyte"]
    assert d.tiny_classes == {"lymphocyte": 7, "monocyte": 4}
    assert d.scale_factor is None
    n_x = len(d.train.x) + len(d.val.x) + len(d.x_test)
    n_y = len(d.train.y) + len(d.val.y) + len(d.y_test)
    assert n_x == 46 and n_y == 54                              # nothing silently dropped
    for s in (d.train.x, d.train.y, d.val.x, d.x_test, d.y_test):
        assert s.images.shape[1:] == (3, 32, 32) and s.images.dtype == torch.float32
    assert set(d.x_test.labels) <= {"basophil", "neutrophil", "monocyte", "platelet"}
    # Splits are disjoint.
    ids = [set(s.ids) for s in (d.train.x, d.val.x, d.x_test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # Same seed, same split.
    assert load_cross(x, y, size=32).x_test.ids == d.x_test.ids


def test_external_x_test_and_limit(tmp_path):
    x = _folder(tmp_path / "x", {"basophil": 20, "neutrophil": 20})
    y = _folder(tmp_path / "y", {"basophil": 20, "neutrophil": 20}, seed=1)
    ext = _folder(tmp_path / "ext", {"basophil": 3, "neutrophil": 5, "eosinophil": 2}, seed=2)
    d = load_cross(x, y, size=24, x_test_dir=ext, limit_per_class=4)
    assert sorted(d.x_test.ids) == sorted([f"basophil_{i}" for i in range(3)]
                                          + [f"neutrophil_{i}" for i in range(4)]
                                          + [f"eosinophil_{i}" for i in range(2)])
    assert d.x_only == ["eosinophil"]
    assert max(d.train.x.labels.count(c) for c in ("basophil", "neutrophil")) == 4


def test_no_shared_class(tmp_path):
    x = _folder(tmp_path / "x", {"basophil": 10})
    y = _folder(tmp_path / "y", {"neutrophil": 10})
    with pytest.raises(DatasetError, match="no cell class in common"):
        load_cross(x, y, size=16)


def test_bad_scale_option(tmp_path):
    with pytest.raises(DatasetError, match="scale"):
        load_cross(tmp_path, tmp_path, scale="size")


def test_scale_normalization(tmp_path):
    x = _folder(tmp_path / "x", {"neutrophil": 10}, shapes=((160, 160),), rbc_d=18)
    y = _folder(tmp_path / "y", {"neutrophil": 10}, shapes=((160, 160),), rbc_d=27, seed=1)
    d = load_cross(x, y, size=128, scale="rbc")
    assert d.scale_factor == pytest.approx(1.5, rel=0.12)
    assert d.x_scale is not None and d.y_scale is not None
    assert d.train.x.images.shape[1:] == (3, 128, 128)
    d2 = load_cross(y, x, size=128, scale="wbc")                 # shrinking: reloaded larger, then cropped
    assert d2.scale_factor == pytest.approx(1 / 1.5, rel=0.12)
    assert d2.x_test.images.shape[1:] == (3, 128, 128)


@pytest.mark.realdata
def test_real_pbc_and_rpi(pbc_dir, rpi_dir):
    torch.set_num_threads(2)
    d = load_cross(rpi_dir, pbc_dir, size=128, limit_per_class=3)
    assert d.shared_classes == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert d.x_only == [] and d.y_only == ["erythroblast", "ig", "platelet"]
    assert d.tiny_classes == {}
    assert len(d.train.x) == 15 and len(d.train.y) == 24
    assert set(d.x_test.labels) == set(d.shared_classes)


def test_the_cross_track_streams_the_same_pixels_it_caches(tmp_path):
    """``CrossTrack(stream=...)`` reads the folders on demand (no decoded copy in the stage cache) and
    gives exactly the sets the cached track gives (uint8 pixels / 255)."""
    from cellbench.bench.cache import StageCache
    from cellbench.bench.config import load_run_config
    from cellbench.bench.cross import PARTS, CrossTrack
    from cellbench.data.cross import Streaming
    from cellbench.data.spec import parse_data_spec
    from cellbench.data.stream import LazyImages

    x = _folder(tmp_path / "x", {"basophil": 12, "neutrophil": 10}, shapes=((40, 40), (36, 50)))
    y = _folder(tmp_path / "y", {"basophil": 10, "neutrophil": 12}, seed=1)
    spec, cfg = parse_data_spec(f"cross:x={x},y={y}"), load_run_config("quick")
    cached = CrossTrack(spec, cfg, StageCache(tmp_path / "run1"), seed=0).data()
    streamed = CrossTrack(spec, cfg, StageCache(tmp_path / "run2"), seed=0, stream=Streaming(cache_mb=1)).data()
    assert not (tmp_path / "run2" / "stages").exists()
    for part in PARTS:
        assert isinstance(streamed[part].images, LazyImages)
        assert streamed[part].labels == cached[part].labels and streamed[part].ids == cached[part].ids
        assert torch.equal(streamed[part].images[:], cached[part].images)
    assert streamed["shared"] == cached["shared"]
