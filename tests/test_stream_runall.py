"""Streamed run-all (issue #16 item 3): the ``stream`` option, and bounded-memory paths that give the
in-memory results.

Every dataset is generated under ``tmp_path``; runs are tiny (64 px, a few dozen images).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cellbench.bench import open_benchmark
from cellbench.bench.config import load_run_config
from cellbench.errors import ConfigError

CLASSES = ("lymphocyte", "neutrophil", "monocyte")


def _folder(root, *, per_class: int, tint: tuple[float, float, float], seed: int, size: int = 72):
    """A labelled folder ``root/<class>/<i>.png``: a tinted background and a class-shaped dark disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for k, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img = np.full((size, size, 3), 225.0) * np.asarray(tint)
            cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
            r = 8 + 5 * k + rng.integers(0, 3)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img[disc] = np.asarray([120 + 30 * k, 60, 150 - 20 * k]) * np.asarray(tint)
            img += rng.normal(0, 6, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / cls / f"{cls}_{i}.png")
    return root


@pytest.fixture(scope="module")
def cross_folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("cross")
    x = _folder(base / "x", per_class=30, tint=(1.0, 0.85, 0.8), seed=1)
    y = _folder(base / "y", per_class=30, tint=(0.9, 0.95, 1.0), seed=2)
    return x, y


TINY = {"size": 64, "speed_batch_sizes": [1], "speed_repeats": 1, "speed_seconds": 0.2, "samples_per_class": 1}


def _records(run_dir) -> dict:
    """Every non-speed record's value, CI and n (fit time left out: it is a measurement)."""
    data = json.loads((run_dir / "results.json").read_text())
    recs = data["records"] if isinstance(data, dict) else data
    out = {}
    for r in recs:
        if r.get("split") == "speed" or "seconds" in r["metric"]:
            continue
        key = (r["method"], r["metric"], r.get("cell_type"), r.get("region"), str(r.get("extra", {}).get("vs")))
        out[key] = tuple(None if isinstance(v, float) and math.isnan(v) else v
                         for v in (r.get("value"), r.get("ci_low"), r.get("ci_high"), r.get("n")))
    return out


def _run(tmp_path, name, x, y, methods, **overrides):
    bench = open_benchmark(tmp_path / name, data=f"cross:x={x},y={y}", methods=methods, progress=False,
                           overrides={**TINY, **overrides})
    bench.configure(jobs=1)
    bench.run()
    return bench


# -- the option ------------------------------------------------------------------------------------------
def test_stream_option_is_validated():
    assert load_run_config("quick").stream == "auto"
    assert load_run_config("quick").stream_cache_mb == 512.0
    assert load_run_config("quick", {"stream": "ON"}).stream == "on"
    assert load_run_config("quick", {"stream": False}).stream == "off"
    with pytest.raises(ConfigError, match="stream='sometimes'"):
        load_run_config("quick", {"stream": "sometimes"})
    with pytest.raises(ConfigError, match="stream_cache_mb"):
        load_run_config("quick", {"stream_cache_mb": -5})
    with pytest.raises(ConfigError, match="stream_cache_mb"):
        load_run_config("quick", {"stream_cache_mb": "lots"})


def test_cli_stream_option_sets_the_profile_key():
    import argparse

    from cellbench.cli import bench as cli
    from cellbench.options import parse_set_items

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["run-all", "--stream", "on", "--set", "stream_cache_mb=64"])
    assert cli._overrides(args, parse_set_items) == {"stream_cache_mb": 64, "stream": "on"}
    args = parser.parse_args(["compare", "hm", "affine", "--stream", "off"])
    assert cli._overrides(args, parse_set_items) == {"stream": "off"}
    with pytest.raises(SystemExit):
        parser.parse_args(["run-all", "--stream", "maybe"])


def test_auto_streams_only_folders_beyond_the_budget(cross_folders, tmp_path, monkeypatch):
    from cellbench.bench import config as config_mod

    x, y = cross_folders
    bench = open_benchmark(tmp_path / "a", data=f"cross:x={x},y={y}", methods=["identity"], progress=False,
                           overrides=TINY)
    assert bench.track.stream is None  # 180 images at 64 px: far below 4 GB
    monkeypatch.setattr(config_mod, "STREAM_AUTO_MB", 0.5)
    bench = open_benchmark(tmp_path / "b", data=f"cross:x={x},y={y}", methods=["identity"], progress=False,
                           overrides={**TINY, "stream_cache_mb": 8})
    assert bench.track.stream is not None and bench.track.stream.cache_mb == 8
    bench = open_benchmark(tmp_path / "c", data=f"cross:x={x},y={y}", methods=["identity"], progress=False,
                           overrides={**TINY, "stream": "off"})
    assert bench.track.stream is None


# -- whole runs ------------------------------------------------------------------------------------------
def test_streamed_cross_run_gives_the_in_memory_results(cross_folders, tmp_path):
    x, y = cross_folders
    methods = ["identity", "hm", "histmatch"]
    mem = _run(tmp_path, "mem", x, y, methods, stream="off")
    streamed = _run(tmp_path, "str", x, y, methods, stream="on", stream_cache_mb=1)
    assert mem.track.stream is None and streamed.track.stream is not None
    images = streamed.track.data()["x_train"].images
    assert type(images).__name__ == "LazyImages" and images.cached() <= images.cache_capacity
    # nothing decoded into the stage cache: no cross-data stage
    assert not list((tmp_path / "str" / "stages").glob("cross-data-*"))
    a, b = _records(tmp_path / "mem"), _records(tmp_path / "str")
    assert a.keys() == b.keys()
    assert any(k[1] == "fid" for k in a) and any(k[1] == "colour_delta_e" for k in a)
    assert a == b
    # the stored outputs are the same bytes (and the memory-mapped loader reads them back)
    for m in methods:
        assert torch.equal(mem.evaluate(m).outputs, streamed.evaluate(m).outputs)


def test_bounded_evaluation_subset_keeps_accuracy(cross_folders, tmp_path, monkeypatch):
    """With the image-level metrics capped (seeded subsets), accuracy and McNemar still count every
    test image (the same values as in memory); the colour statistics count their subset."""
    from cellbench.bench import cross, runner

    x, y = cross_folders
    methods = ["identity", "histmatch"]
    mem = _records(_run(tmp_path, "mem", x, y, methods, stream="off", realism=False).run_dir)
    monkeypatch.setattr(cross, "EVAL_CAP", 5)
    monkeypatch.setattr(cross, "COLOUR_CAP", 3)
    monkeypatch.setattr(runner, "EVAL_CHUNK", 4)  # several chunks, a short last one
    capped = _run(tmp_path, "cap", x, y, methods, stream="on", realism=False)
    n_test = len(capped.track.test_inputs())
    assert n_test > 5
    got = _records(capped.run_dir)
    for key, value in mem.items():
        if key[1] in ("accuracy", "accuracy_gain", "mcnemar_p"):
            assert got[key] == value, key
    colour = [v for k, v in got.items() if k[1] == "colour_delta_e" and k[2] == "all" and k[3] == "background"]
    assert colour and all(v[3] == 3 for v in colour)
    assert capped.evaluate("histmatch").outputs.shape[0] == n_test


# -- the pieces ------------------------------------------------------------------------------------------
def _lazy_pairs(tmp_path, n=12, size=32):
    from cellbench.data.sets import PairedSet
    from cellbench.data.stream import LazyImages

    rng = np.random.default_rng(0)
    files = {"x": [], "y": []}
    for side in files:
        (tmp_path / side).mkdir()
        for i in range(n):
            p = tmp_path / side / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
            files[side].append(p)
    lazy = PairedSet(LazyImages(files["x"], size=size, cache_mb=0.01), LazyImages(files["y"], size=size, cache_mb=0),
                     ["a"] * n, [str(i) for i in range(n)])
    mem = PairedSet(lazy.x[:], lazy.y[:], ["a"] * n, [str(i) for i in range(n)])
    return lazy, mem


def test_sample_pixels_streamed_is_the_in_memory_sample(tmp_path, monkeypatch):
    from cellbench.methods import simple

    lazy, mem = _lazy_pairs(tmp_path)
    for a, b in zip(simple.sample_pixels(lazy, 500, 3), simple.sample_pixels(mem, 500, 3), strict=True):
        assert torch.equal(a, b)
    # beyond SAMPLE_IMAGES: a seeded subset of images, then pixels among them
    monkeypatch.setattr(simple, "SAMPLE_IMAGES", 4)
    x, y = simple.sample_pixels(lazy, 10**6, 3)
    assert x.shape == (4 * 32 * 32, 3) and y.shape == x.shape
    x2, _ = simple.sample_pixels(lazy, 10**6, 3)
    assert torch.equal(x, x2)
    fitted = simple.AffineNormalizer().fit(lazy, seed=0)
    assert torch.isfinite(fitted.matrix).all()


def test_hm_fit_on_streamed_sets_equals_in_memory(tmp_path, monkeypatch):
    from cellbench.data.sets import UnpairedSet
    from cellbench.methods import hm
    from cellbench.methods.hm import HMNormalizer

    lazy, mem = _lazy_pairs(tmp_path)
    a = HMNormalizer().fit(lazy, seed=0)
    b = HMNormalizer().fit(mem, seed=0)
    assert torch.equal(a.matrices, b.matrices) and torch.equal(a.target_bg, b.target_bg)
    from cellbench.data.sets import LabelledSet

    unp = UnpairedSet(LabelledSet(lazy.x, lazy.labels, lazy.ids), LabelledSet(lazy.y, lazy.labels, lazy.ids))
    monkeypatch.setattr(hm, "SEGMENTER_IMAGES", 5)  # the segmenters on a seeded sample
    c = HMNormalizer().fit(unp, seed=0)
    assert torch.isfinite(c.matrices).all()


def test_chunks_regroup_streamed_batches(tmp_path):
    from cellbench.bench.runner import _chunks, _predict

    lazy, mem = _lazy_pairs(tmp_path, n=11)
    parts = list(_chunks(lazy.x, 4, batch_size=3))
    assert [len(p) for p in parts] == [4, 4, 3]
    assert torch.equal(torch.cat(parts), mem.x)
    assert [len(p) for p in _chunks(mem.x, 4)] == [4, 4, 3]

    class Clf:
        def predict(self, images):
            return images.mean((1, 2, 3)).gt(0.5).long()

    assert np.array_equal(_predict(Clf(), lazy.x), _predict(Clf(), mem.x))


def test_mapped_outputs_equal_the_stored_tensor(tmp_path):
    from cellbench.bench.cache import StageCache
    from cellbench.bench.store import load_tensors, load_tensors_mapped, save_tensors

    cache = StageCache(tmp_path)
    st = cache.stage("eval-x", {"k": 1})
    cache.begin(st)
    t = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    save_tensors(st, "outputs.safetensors", {"outputs": t})
    save_tensors(st, "f.safetensors", {"f": torch.rand(3, 2)})
    cache.finish(st)
    mapped = load_tensors_mapped(st, "outputs.safetensors")["outputs"]
    assert torch.equal(mapped, t) and torch.equal(mapped, load_tensors(st, "outputs.safetensors")["outputs"])
    assert torch.equal(load_tensors_mapped(st, "f.safetensors")["f"], load_tensors(st, "f.safetensors")["f"])


def test_a_paired_test_split_is_kept_uint8_with_the_float_values(tmp_path):
    """The paired track keeps its test split as the stored uint8 images, memory-mapped (issue #16: a 2,000-pair
    test split is 1.2 GB as uint8, 4.7 GB as float32); read as floats they are the float split exactly, and a
    truncated file still fails with the store's error, not a crash of the memory map."""
    from cellbench.bench.cache import StageCache
    from cellbench.bench.store import StoreError, as_float01, load_paired, save_paired, to_uint8
    from cellbench.data.sets import PairedSet

    cache = StageCache(tmp_path)
    st = cache.stage("data", {"k": 1})
    cache.begin(st)
    g = torch.Generator().manual_seed(0)
    x, y, y2 = (torch.rand(4, 3, 16, 16, generator=g) for _ in range(3))
    masks = torch.randint(0, 6, (4, 16, 16), generator=g).to(torch.uint8)
    save_paired(st, "test", PairedSet(x, y, ["a", "b", "a", "b"], ["0", "1", "2", "3"], masks, y2))
    cache.finish(st)
    f, u = load_paired(st, "test"), load_paired(st, "test", keep_uint8=True)
    for a, b in ((f.x, u.x), (f.y, u.y), (f.y2, u.y2)):
        assert b.dtype == torch.uint8 and a.dtype == torch.float32
        assert torch.equal(as_float01(b), a) and torch.equal(to_uint8(b), b) and torch.equal(to_uint8(a), b)
    assert torch.equal(u.masks, f.masks) and u.labels == f.labels and u.ids == f.ids
    path = st.path("test.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(StoreError, match="test.safetensors"):
        load_paired(st, "test", keep_uint8=True)


def test_streamed_paired_folder_gives_the_in_memory_results(cross_folders, tmp_path):
    """``paired:ROOT`` streamed: the training pairs read on demand (affine's pixel sample, hm's fit and
    the classifier see the same pixels), val/test from the ``data-stream`` stage; the same records."""
    import shutil

    _, y = cross_folders
    root = tmp_path / "pairs"
    shutil.copytree(y, root / "Y")
    for f in sorted((root / "Y").rglob("*.png")):
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64)
        target = root / "X" / f.relative_to(root / "Y")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(a * [0.9, 1.05, 0.8], 0, 255).astype(np.uint8)).save(target)
    runs = {}
    for mode in ("off", "on"):
        bench = open_benchmark(tmp_path / mode, data=f"paired:{root}", methods=["affine", "hm"], progress=False,
                               overrides={**TINY, "stream": mode, "realism": False})
        bench.configure(jobs=1).run()
        runs[mode] = bench
    assert runs["off"].track.stream is None and runs["on"].track.stream is not None
    assert type(runs["on"].track.train_data().x).__name__ == "LazyImages"
    assert list((tmp_path / "on" / "stages").glob("data-stream-*"))
    assert not list((tmp_path / "on" / "stages").glob("data-[0-9a-f]*"))
    a, b = _records(tmp_path / "off"), _records(tmp_path / "on")
    assert a.keys() == b.keys() and any(k[1] == "psnr" for k in a)
    assert a == b
