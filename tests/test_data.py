"""Dataset formats: paired and labelled layouts, classes, splits, check."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from cellbench.data import CLASSES, LabelledFolder, PairedFolder, canonical_class
from cellbench.data.check import check_dataset
from cellbench.data.spec import parse_data_spec
from cellbench.data.splits import read_splits, split_cache_path, stratified_split, write_splits
from cellbench.errors import ConfigError, DatasetError
from cellbench.io import write_image, write_mask
from cellbench.tensors import center_crop_or_pad, rotate90


def make_paired(root, classes=("neutrophil", "eosinophil"), n=10, size=(40, 44), masks=True, seed=0):
    rng = np.random.default_rng(seed)
    for cls in classes:
        for i in range(n):
            x = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            write_image(root / "X" / cls / f"c{i:03d}.png", x)
            write_image(root / "Y" / cls / f"c{i:03d}.png", 255 - x)
            if masks:
                write_mask(root / "masks" / cls / f"c{i:03d}.png", (x[..., 0] % 6).astype(np.uint8))
    return root


def test_class_aliases():
    assert canonical_class("Neutrophils") == "neutrophil"
    assert canonical_class("SNE") == "neutrophil" and canonical_class("BNE") == "neutrophil"
    assert canonical_class("MMY") == "ig" and canonical_class("PMY") == "ig" and canonical_class("IG") == "ig"
    assert canonical_class("Basophil") == "basophil"
    with pytest.raises(DatasetError, match="Known classes: basophil"):
        canonical_class("gremlin")


def test_stratified_split_is_seeded_and_balanced():
    keys = [(c, f"{i:04d}") for c in CLASSES for i in range(50)]
    a = stratified_split(keys, seed=3)
    assert a == stratified_split(list(reversed(keys)), seed=3)
    assert a != stratified_split(keys, seed=4)
    for c in CLASSES:
        counts = {s: sum(1 for (k, _), v in a.items() if k == c and v == s) for s in ("train", "val", "test")}
        assert counts == {"train": 40, "val": 5, "test": 5}


def test_paired_folder_load_and_split_cached_not_written_into_dataset(tmp_path):
    root = make_paired(tmp_path / "ds")
    pf = PairedFolder(root)
    assert not (root / "splits.csv").exists()  # the user's folder is never written
    cached = split_cache_path([(it.cls, it.id) for it in pf.items], 0)
    assert cached.is_file() and str(cached).startswith(os.environ["CELLBENCH_CACHE"])
    first = read_splits(cached)
    assert len(first) == 20 and first == {(it.cls, it.id): it.split for it in pf.items}
    again = PairedFolder(root)
    assert {(it.cls, it.id): it.split for it in again.items} == first  # never changes between runs
    own = tmp_path / "run" / "splits.csv"  # a run keeps its own copy
    assert {(it.cls, it.id): it.split for it in PairedFolder(root, splits_file=own).items} == first
    assert read_splits(own) == first
    data = pf.load(None, size=32)
    assert data.x.shape == (20, 3, 32, 32) and data.masks.shape == (20, 32, 32)
    # Y was written as 255 - X: the pair stays aligned after the centre crop
    assert np.allclose((data.x + data.y).numpy(), 1.0, atol=1e-6)
    rot = pf.load("train", size=32, rotations=True)
    assert len(rot) == 4 * len(pf.select("train"))
    assert rot.ids[1].endswith("_rot90")
    # uint8=True: the decoded 8-bit images, exactly the float set times 255 (what the data stage stores)
    u8 = pf.load(None, size=32, uint8=True)
    assert u8.x.dtype == torch.uint8 and u8.x.shape == data.x.shape and u8.ids == data.ids
    assert torch.equal(u8.x.float().div_(255.0), data.x) and torch.equal(u8.y.float().div_(255.0), data.y)
    assert torch.equal(u8.masks, data.masks)


def test_paired_folder_reports_unmatched_and_unknown(tmp_path):
    root = make_paired(tmp_path / "ds", n=3, masks=False)
    write_image(root / "X" / "neutrophil" / "orphan.png", np.zeros((8, 8, 3), np.uint8))
    (root / "Y" / "gremlins").mkdir()
    with pytest.raises(DatasetError, match="orphan"):
        PairedFolder(root)
    pf = PairedFolder(root, strict=False)
    assert len(pf.items) == 6


def test_labelled_folder_aliases_and_sizes(tmp_path):
    root = tmp_path / "lab"
    write_image(root / "Neutrophils" / "a.jpg", np.full((30, 30, 3), 100, np.uint8))
    write_image(root / "SNE" / "b.png", np.full((34, 36, 3), 50, np.uint8))
    write_image(root / "lymphocyte" / "c.png", np.full((20, 20, 3), 200, np.uint8))
    lf = LabelledFolder(root)
    assert lf.classes() == ["lymphocyte", "neutrophil"]
    s = lf.load(None, size=24)
    assert s.images.shape == (3, 3, 24, 24) and sorted(s.labels) == ["lymphocyte", "neutrophil", "neutrophil"]


def test_check_reports_every_problem(tmp_path):
    root = make_paired(tmp_path / "ds", n=4)
    (root / "X" / "neutrophil" / "c000.png").write_bytes(b"garbage")
    data = (root / "Y" / "eosinophil" / "c001.png").read_bytes()
    (root / "Y" / "eosinophil" / "c001.png").write_bytes(data[:60])
    write_image(root / "Y" / "neutrophil" / "lonely.png", np.zeros((40, 44, 3), np.uint8))
    (root / "X" / "dragons").mkdir()
    write_mask(root / "masks" / "eosinophil" / "c002.png", np.full((40, 44), 9, np.uint8))
    rep = check_dataset(root)
    kinds = {p.kind for p in rep.errors}
    assert kinds == {"unreadable", "unmatched", "unknown_class", "bad_mask"}
    assert not rep.ok
    assert sum(rep.counts["neutrophil"].values()) == 4
    assert any("c000.png" in p.message for p in rep.errors)


def test_check_real_pbc(pbc_dir):
    rep = check_dataset(pbc_dir)
    assert rep.ok and rep.files_decoded == 4000
    assert {c: sum(v.values()) for c, v in rep.counts.items()} == {c: 500 for c in CLASSES}
    assert rep.sizes.most_common(1)[0][0] == (363, 360)  # (H, W): 360 wide, 363 high


def test_real_pbc_through_data_layer(pbc_dir):
    lf = LabelledFolder(pbc_dir)
    assert len(lf.items) == 4000 and lf.classes() == list(CLASSES)
    s = lf.load("test", size=256, limit_per_class=3)
    assert s.images.shape == (24, 3, 256, 256)
    assert 0.3 < float(s.images.mean()) < 0.95  # bright-field: mostly light background


def test_crop_pad_and_rotate():
    a = np.arange(5 * 7).reshape(5, 7)
    assert center_crop_or_pad(a, (3, 3)).tolist() == [[9, 10, 11], [16, 17, 18], [23, 24, 25]]
    padded = center_crop_or_pad(a, (7, 9))
    assert padded.shape == (7, 9) and np.array_equal(padded[1:6, 1:8], a)
    assert np.array_equal(rotate90(rotate90(a, 1), 3), a)


def test_data_spec(tmp_path):
    make_paired(tmp_path / "p", n=3)
    assert parse_data_spec(str(tmp_path / "p")).kind == "paired"
    assert parse_data_spec("synthetic:n=40,seed=2").options == {"n": "40", "seed": "2"}
    with pytest.raises(ConfigError, match="not found"):
        parse_data_spec("paired:/no/such/dir")
    with pytest.raises(ConfigError, match="unknown option"):
        parse_data_spec("synthetic:colour=red")


# -- splits that never leak (issue #13, item 1) ----------------------------------------------------


def _paired_with_ids(root, ids, cls="neutrophil"):
    rng = np.random.default_rng(0)
    for ident in ids:
        x = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        write_image(root / "X" / cls / f"{ident}.png", x)
        write_image(root / "Y" / cls / f"{ident}.png", 255 - x)
    return root


def test_ids_with_leading_spaces_keep_their_split_on_every_load(tmp_path):
    # the reproduction: files " p0.png" ... " p9.png"; the first fit trained on 8, the second on all 10
    root = _paired_with_ids(tmp_path / "ds", [f" p{i}" for i in range(10)])
    first = PairedFolder(root)
    assert {it.id for it in first.items} == {f" p{i}" for i in range(10)}
    train1 = [it.id for it in first.select("train")]
    assert len(train1) == 8
    # a user-provided splits.csv spelling the ids exactly as the files is honoured as written
    splits = {(it.cls, it.id): it.split for it in first.items}
    write_splits(root / "splits.csv", splits)
    assert "neutrophil, p0," in (root / "splits.csv").read_text()
    second = PairedFolder(root)
    assert [it.id for it in second.select("train")] == train1
    assert {(it.cls, it.id): it.split for it in second.items} == splits
    assert len(second.load("train", size=16)) == 8


@pytest.mark.parametrize("rows, match", [
    ("neutrophil,c000,train\nneutrophil,c000,test\n", r"splits.csv:3: duplicate row .*first at line 2"),
    ("neutrophil,c000,train\nneutrophil,c000,train\n", r"splits.csv:3: duplicate row"),
    ("neutrophil,c000,train\nneutrophil,nosuch,test\n", r"splits.csv:3: no image with class 'neutrophil' "
                                                          r"and id 'nosuch'"),
    ("neutrophil, c000,train\n", r"splits.csv:2: no image .* id ' c000'"),  # ids are not stripped
    ("neutrophil,c000,testing\n", r"splits.csv:2: split 'testing'"),
    ("gremlin,c000,train\n", r"splits.csv:2: unknown cell class 'gremlin'"),
])
def test_bad_split_rows_are_refused_naming_file_and_line(tmp_path, rows, match):
    root = make_paired(tmp_path / "ds", classes=("neutrophil",), n=3, masks=False)
    (root / "splits.csv").write_text("class,id,split\n" + rows)
    with pytest.raises(DatasetError, match=match):
        PairedFolder(root)
    with pytest.raises(DatasetError, match=match):
        PairedFolder(root, strict=False)  # not even tolerated when other problems are
    rep = check_dataset(root)  # data check lists it instead of raising
    assert any(p.kind == "splits" for p in rep.errors) and not rep.ok


def test_labelled_folder_refuses_unknown_split_ids(tmp_path):
    root = tmp_path / "lab"
    write_image(root / "lymphocyte" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (root / "splits.csv").write_text("class,id,split\nlymphocyte,a,test\nlymphocyte,b,train\n")
    with pytest.raises(DatasetError, match=r"splits.csv:3: no image .* id 'b'"):
        LabelledFolder(root)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses non-UTF-8 file names")
def test_non_utf8_file_name_in_write_splits_is_refused_and_leaves_nothing(tmp_path):
    bad = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: not UTF-8, decoded with surrogateescape
    out = tmp_path / "s" / "splits.csv"
    with pytest.raises(DatasetError, match=r"not valid UTF-8 .*rename the file"):
        write_splits(out, {("neutrophil", bad): "train", ("neutrophil", "ok"): "test"})
    assert not out.exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no .splits-XXXX.csv / temporary left behind
    # a dataset with such a file still loads (the split is computed; only caching it is skipped)
    root = tmp_path / "ds"
    for ident in ("ok1", "ok2"):
        write_image(root / "neutrophil" / f"{ident}.png", np.zeros((8, 8, 3), np.uint8))
    (root / "neutrophil" / "ok1.png").rename(root / "neutrophil" / os.fsdecode(b"caf\xe9.png"))
    assert len(LabelledFolder(root).items) == 2
    assert not list(root.rglob("*.csv")) and not list(root.rglob(".splits*"))


# -- data check: what used to be skipped silently (issue #13, item 8) --------------------------------


def test_check_reports_links_folders_named_like_images_and_same_stem(tmp_path):
    root = tmp_path / "lab"
    write_image(root / "neutrophil" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    (root / "neutrophil" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "neutrophil" / "loop.png").symlink_to(root / "neutrophil" / "loop.png")
    (root / "neutrophil" / "folder.png").mkdir()
    write_image(root / "neutrophil" / "twin.png", np.zeros((8, 8, 3), np.uint8))
    (root / "neutrophil" / "twin.jpg").write_bytes(b"not a jpeg")
    rep = check_dataset(root)
    by_kind = {}
    for p in rep.problems:
        by_kind.setdefault(p.kind, []).append(p.message)
    assert any("dangling symbolic link" in m and "dangling.png" in m for m in by_kind["broken_link"])
    assert any("symbolic link loop" in m and "loop.png" in m for m in by_kind["broken_link"])
    assert any("folder.png" in m and "folder named like an image" in m for m in by_kind["not_image"])
    twin = by_kind["duplicate_id"]
    assert len(twin) == 1 and "twin.jpg" in twin[0] and "twin.png" in twin[0]
    # both files of the colliding id are decoded: the broken twin.jpg is reported as unreadable
    assert any("twin.jpg" in m for m in by_kind["unreadable"])
    assert rep.files_decoded == 3 and not rep.ok
