"""``cellbench transform`` at scale (issue #16 items 3 and 4): streaming, resume, atomic outputs,
progress on stderr, sharding by rank, and outputs identical to the in-memory transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cellbench.cli import main
from cellbench.io import read_image, write_image
from cellbench.methods import load_normalizer
from cellbench.tensors import to_tensor, to_uint8
from cellbench.transform import MANIFEST, shard, transform_folder

from .test_data import make_paired


@pytest.fixture(scope="module")
def poly_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("poly")
    root = make_paired(tmp / "ds", n=5, size=(32, 32), masks=False)
    assert main(["fit", "poly", "--data", str(root), "--out", str(tmp / "poly"), "--size", "32"]) == 0
    return tmp / "poly"


def _folder(root, n=21, seed=1):
    """``n`` PNG images in two sub-folders, two sizes (so batches split by size)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (24, 28, 3) if i % 4 else (20, 20, 3)
        write_image(root / ("a" if i % 2 else "b") / f"im{i:03d}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    return root


def _outputs(out):
    return sorted(p.relative_to(out) for p in out.rglob("*.png"))


def test_outputs_equal_the_in_memory_transform(tmp_path, poly_model, capsys):
    src, out = _folder(tmp_path / "in"), tmp_path / "out"
    s = transform_folder(poly_model, src, out, batch_size=4, workers=1, progress=False)
    assert (s.written, s.existing, s.failed) == (21, 0, [])
    norm = load_normalizer(poly_model)
    for rel in _outputs(out):
        x = read_image(src / rel)
        with torch.inference_mode():
            want = to_uint8(norm.transform(to_tensor(x.copy())))[0]
        np.testing.assert_array_equal(read_image(out / rel), want)  # PNG: lossless
    assert _outputs(out) == sorted(p.relative_to(src) for p in src.rglob("*.png"))


def test_resume_skips_finished_outputs_untouched(tmp_path, poly_model, capsys):
    src, out = _folder(tmp_path / "in"), tmp_path / "out"
    transform_folder(poly_model, src, out, batch_size=4, workers=0, progress=False)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.png")}
    gone = sorted(before)[3]
    gone.unlink()
    s = transform_folder(poly_model, src, out, batch_size=4, workers=0, progress=False)
    assert (s.written, s.existing) == (1, 20)
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.png")}
    assert {p: v for p, v in after.items() if p != gone} == {p: v for p, v in before.items() if p != gone}
    assert gone.exists()
    # the CLI says so
    assert main(["transform", "--model", str(poly_model), str(src), str(out), "-q"]) == 0
    assert "transformed 0 image(s), skipped 21 already done" in capsys.readouterr().out


def test_a_run_killed_mid_way_leaves_no_partial_file_and_resumes(tmp_path, poly_model, monkeypatch):
    src, out = _folder(tmp_path / "in"), tmp_path / "out"
    real_save = Image.Image.save
    calls = {"n": 0}

    def dying_save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # half an image reaches the disk, then the process "dies"
            with open(fp, "wb") as fh:
                fh.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        transform_folder(poly_model, src, out, batch_size=4, workers=0, progress=False)
    monkeypatch.setattr(Image.Image, "save", real_save)
    made = _outputs(out)
    assert 0 < len(made) < 21
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # the half file was removed
    for rel in made:  # every output present is whole
        assert read_image(out / rel).shape == read_image(src / rel).shape
    # a SIGKILL leaves the temporary file behind: the next run removes it, and finishes the rest
    (out / "a" / ".im001.png.abc123xy.tmp").write_bytes(b"half")
    s = transform_folder(poly_model, src, out, batch_size=4, workers=0, progress=False)
    assert s.written == 21 - len(made) and s.existing == len(made)
    assert not (out / "a" / ".im001.png.abc123xy.tmp").exists()
    assert len(_outputs(out)) == 21


def test_an_exception_in_the_normalizer_stops_without_partial_files(tmp_path, poly_model, monkeypatch):
    from cellbench.methods.poly import PolyNormalizer

    src, out = _folder(tmp_path / "in"), tmp_path / "out"
    real = PolyNormalizer._transform
    calls = {"n": 0}

    def failing(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory (simulated)")
        return real(self, images)

    monkeypatch.setattr(PolyNormalizer, "_transform", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        transform_folder(poly_model, src, out, batch_size=4, workers=1, progress=False)
    assert 0 < len(_outputs(out)) < 21
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert (out / MANIFEST).exists()


def test_progress_goes_to_stderr_and_quiet_silences_it(tmp_path, poly_model, capsys):
    src = _folder(tmp_path / "in", n=6)
    assert main(["transform", "--model", str(poly_model), str(src), str(tmp_path / "o1"), "--workers", "0"]) == 0
    cap = capsys.readouterr()
    assert "6/6" in cap.err and "img" in cap.err and "poly" in cap.err
    assert "6/6" not in cap.out and "transformed 6 image(s)" in cap.out
    assert main(["transform", "--model", str(poly_model), str(src), str(tmp_path / "o2"), "--workers", "0",
                 "-q"]) == 0
    assert "6/6" not in capsys.readouterr().err


def test_unreadable_inputs_are_reported_with_their_name_and_skipped(tmp_path, poly_model, capsys):
    src = _folder(tmp_path / "in", n=5)
    (src / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["transform", "--model", str(poly_model), str(src), str(tmp_path / "out"), "-q",
                 "--workers", "1"]) == 1
    cap = capsys.readouterr()
    assert "transformed 5 image(s)" in cap.out and "1 unreadable" in cap.out
    assert "broken.png" in cap.err
    assert not (tmp_path / "out" / "a" / "broken.png").exists()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_deals_every_file_to_exactly_one_rank_in_whole_batches(world):
    items = list(range(23))
    parts = [shard(items, r, world, 4) for r in range(world)]
    assert sorted(i for p in parts for i in p) == items
    for r, part in enumerate(parts):  # whole batches of consecutive files, dealt in turn
        assert all((i // 4) % world == r for i in part)


def test_workers_and_writers_are_range_checked(tmp_path, poly_model, capsys):
    src = _folder(tmp_path / "in", n=2)
    for flag, value in (("--workers", "-1"), ("--writers", "0"), ("--prefetch", "0")):
        assert main(["transform", "--model", str(poly_model), str(src), str(tmp_path / "out"), flag, value]) == 2
        assert flag in capsys.readouterr().err


def test_one_run_at_a_time_writes_into_a_folder(tmp_path, poly_model):
    from cellbench.fs import FolderLock, LockedError

    src, out = _folder(tmp_path / "in", n=3), tmp_path / "out"
    with FolderLock(out), pytest.raises(LockedError, match="in use by another cellbench process"):
        transform_folder(poly_model, src, out, workers=0, progress=False)
    assert not _outputs(out)
    assert transform_folder(poly_model, src, out, workers=0, progress=False).written == 3  # the lock was released


def test_every_number_of_chains_writes_the_same_files(tmp_path, poly_model):
    """The process-parallel chain (the main process and ``workers`` workers, batches dealt in turn)
    writes byte for byte what the main process alone writes, JPEG outputs included, and the
    unreadable file is reported once whichever process read it."""
    src = _folder(tmp_path / "in", n=23)
    rng = np.random.default_rng(5)
    for i in range(3):
        write_image(src / "c" / f"j{i}.jpg", rng.integers(0, 256, (24, 28, 3), dtype=np.uint8))
    (src / "c" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    runs = {w: transform_folder(poly_model, src, tmp_path / f"w{w}", batch_size=3, workers=w, progress=False)
            for w in (0, 1, 2)}
    for w, s in runs.items():
        assert (s.written, s.existing, [p for p, _ in s.failed]) == (26, 0, [str(src / "c" / "broken.png")]), w
    files = sorted(p.relative_to(tmp_path / "w0") for p in (tmp_path / "w0").rglob("*.*") if not p.name.startswith("."))
    assert len(files) == 26 and any(f.suffix == ".jpg" for f in files)
    for w in (1, 2):
        for rel in files:
            assert (tmp_path / f"w{w}" / rel).read_bytes() == (tmp_path / "w0" / rel).read_bytes(), (w, rel)


def test_png_outputs_are_lossless_at_every_level_and_the_levels_are_checked(tmp_path, poly_model):
    src = _folder(tmp_path / "in", n=4)
    transform_folder(poly_model, src, tmp_path / "l1", workers=0, progress=False)  # the default, level 1
    transform_folder(poly_model, src, tmp_path / "l9", workers=0, progress=False, png_level=9)
    for rel in _outputs(tmp_path / "l1"):
        np.testing.assert_array_equal(read_image(tmp_path / "l1" / rel), read_image(tmp_path / "l9" / rel))
    from cellbench.errors import ConfigError

    with pytest.raises(ConfigError, match="png-level"):
        transform_folder(poly_model, src, tmp_path / "x", png_level=10, progress=False)
    with pytest.raises(ConfigError, match="jpeg-quality"):
        transform_folder(poly_model, src, tmp_path / "x", jpeg_quality=0, progress=False)


def test_default_workers_give_one_chain_per_usable_core(monkeypatch):
    """Closed-form normalizers on the CPU: usable cores - 1 workers (the main process is the last
    chain), shared among torchrun's local ranks; a network keeps the decoding-worker default."""
    import cellbench.transform as tr
    from cellbench.data.stream import default_workers

    class Closed:
        name = "poly"

    class Net:
        name = "ccgan"
        G_xy = object()

    for cores, ranks, want in ((1, 1, 0), (2, 1, 1), (4, 1, 3), (4, 2, 1), (64, 1, 7)):
        monkeypatch.setattr(tr, "usable_cores", lambda c=cores: c)
        assert tr.default_transform_workers(Closed(), "cpu", local_ranks=ranks) == want, (cores, ranks)
    assert tr.default_transform_workers(Net(), "cpu") == default_workers()
    assert tr.default_transform_workers(Closed(), "cuda") == default_workers()
