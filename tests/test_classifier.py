"""The WBC classifier: training, early stopping, resume, persistence, evaluation, errors.

Synthetic classes are separable by construction (colour and shape of a central blob), so a tiny
network must learn them far above chance; every figure asserted below is a property that a
broken implementation would fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cellbench.data.sets import LabelledSet
from cellbench.errors import CheckpointError, ConfigError, DatasetError, MissingWeightsError
from cellbench.nets.classifier import META_FILE, WEIGHTS_FILE, WBCClassifier, load_classifier
from cellbench.presets import preset_names
from cellbench.train.classifier import LOG_FILE, classifier_config, evaluate_classifier, train_classifier

CLASSES = ["eosinophil", "lymphocyte", "neutrophil", "platelet"]
# One thread: the tests run on a shared 2-core machine where two threads mostly wait for each other.
FAST = {"threads": 1, "progress": False}


def synthetic_set(n_per_class: int, *, size: int = 32, seed: int = 0) -> LabelledSet:
    """Pink background with noise; per class a blob of its own colour and shape at a random spot.

    eosinophil: large red-orange disc; lymphocyte: large dark-purple disc;
    neutrophil: purple ring; platelet: small purple disc.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, labels = [], []
    for ci, cls in enumerate(CLASSES):
        for _ in range(n_per_class):
            img = np.empty((size, size, 3), np.float32)
            img[:] = (0.92, 0.80, 0.82)
            cy, cx = rng.uniform(0.4, 0.6, 2) * size
            r = np.hypot(yy - cy, xx - cx)
            colour = {0: (0.85, 0.35, 0.25), 1: (0.35, 0.15, 0.55), 2: (0.45, 0.25, 0.60),
                      3: (0.45, 0.25, 0.60)}[ci]
            rad = size * rng.uniform(0.28, 0.34)
            if ci == 2:
                m = (r < rad) & (r > rad * 0.6)
            elif ci == 3:
                m = r < size * 0.1
            else:
                m = r < rad
            img[m] = colour
            img += rng.normal(0, 0.03, img.shape).astype(np.float32)
            imgs.append(np.clip(img, 0, 1))
            labels.append(cls)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return LabelledSet(x, labels, [f"{c}_{i}" for i, c in enumerate(labels)])


@pytest.fixture(scope="module")
def data():
    return synthetic_set(20, seed=1), synthetic_set(6, seed=2), synthetic_set(12, seed=3)


@pytest.fixture(scope="module")
def small(data):
    return synthetic_set(6, seed=4), data[1], data[2]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    train, val, _ = data
    work = tmp_path_factory.mktemp("clf")
    clf = train_classifier(train, val, preset="tiny", seed=0, work_dir=work, epochs=12, patience=3, **FAST)
    return clf, work


def test_learns_separable_classes_far_above_chance(trained, data):
    clf, _ = trained
    res = evaluate_classifier(clf, data[2])
    assert clf.classes == CLASSES and clf.arch == "test_resnet" and clf.input_size == 32
    assert res["accuracy"] >= 0.9  # chance is 0.25
    assert res["n"] == 48
    conf = np.array(res["confusion"])
    assert conf.shape == (4, 4) and conf.sum() == 48
    assert conf.sum(1).tolist() == [12, 12, 12, 12]  # rows are the true classes
    assert np.trace(conf) / 48 == pytest.approx(res["accuracy"])
    for i, c in enumerate(CLASSES):
        assert res["per_class"][c] == pytest.approx(conf[i, i] / 12)
    assert res["predictions"] == [CLASSES[i] for i in clf.predict(data[2].images).tolist()]


def test_returned_model_is_frozen_eval_and_keeps_global_rng(small):
    before = torch.get_rng_state()
    clf = train_classifier(small[0], small[1], preset="tiny", seed=5, epochs=1, **FAST)
    assert torch.equal(before, torch.get_rng_state())
    assert not clf.training
    assert not any(p.requires_grad for p in clf.parameters())


def test_seed_makes_training_reproducible(small):
    a = train_classifier(small[0], small[1], preset="tiny", seed=3, epochs=1, **FAST)
    b = train_classifier(small[0], small[1], preset="tiny", seed=3, epochs=1, **FAST)
    c = train_classifier(small[0], small[1], preset="tiny", seed=4, epochs=1, **FAST)
    x = small[2].images[:8]
    with torch.no_grad():
        assert torch.allclose(a.logits(x), b.logits(x), atol=1e-5)
        assert not torch.allclose(a.logits(x), c.logits(x), atol=1e-3)


def test_save_load_round_trip_gives_identical_logits(trained, data, tmp_path):
    clf, _ = trained
    clf.save(tmp_path / "m")
    assert (tmp_path / "m" / META_FILE).is_file() and (tmp_path / "m" / WEIGHTS_FILE).is_file()
    meta = json.loads((tmp_path / "m" / META_FILE).read_text())
    assert meta["arch"] == "test_resnet" and meta["classes"] == CLASSES and meta["input_size"] == 32
    assert meta["preset"] == "tiny"
    back = load_classifier(tmp_path / "m")
    x = data[2].images
    with torch.no_grad():
        assert torch.equal(clf.logits(x), back.logits(x))
    assert back.classes == clf.classes and back.info["best_epoch"] == clf.info["best_epoch"]


def test_predict_batched_equals_one_by_one(trained, data):
    clf, _ = trained
    x = data[2].images[:10]
    batched = clf.predict(x, batch_size=4)
    single = torch.cat([clf.predict(x[i:i + 1]) for i in range(len(x))])
    assert batched.dtype == torch.long and batched.shape == (10,)
    assert torch.equal(batched, single)
    with torch.no_grad():
        assert torch.equal(batched, clf.logits(x).argmax(1))


def test_shapes_any_input_size_and_differentiable_features(trained, data):
    clf, _ = trained
    x = data[2].images[:3]
    big = torch.nn.functional.interpolate(x, size=(64, 72), mode="bilinear", align_corners=False)
    assert clf.logits(big).shape == (3, 4)
    f = clf.features(x)
    assert f.shape == (3, clf.feature_dim)
    assert torch.allclose(clf.embed(x, batch_size=2), f.detach(), atol=1e-5)
    fm = clf.feature_maps(x)
    assert fm.ndim == 4 and fm.shape[:2] == (3, clf.feature_dim)
    # A generator is optimised through the frozen classifier (Gram perceptual loss, eq. (8)).
    xg = x.clone().requires_grad_(True)
    gram = (lambda m: torch.einsum("nchw,ndhw->ncd", m, m))(clf.feature_maps(xg))
    gram.mean().backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0


def test_log_and_early_stopping(trained):
    clf, work = trained
    lines = [json.loads(s) for s in (work / LOG_FILE).read_text().splitlines()]
    hist = clf.info["history"]
    assert [r["epoch"] for r in lines] == list(range(1, len(lines) + 1))
    assert [r["val_acc"] for r in lines] == [r["val_acc"] for r in hist]
    assert {"epoch", "train_loss", "val_acc"} <= set(lines[0])
    # The kept epoch (classifier.SELECTION): the best validation accuracy, and among the epochs that reach it
    # the lowest validation loss (the first of exact ties).
    best = max(r["val_acc"] for r in lines)
    tied = [r for r in lines if r["val_acc"] == best]
    # easy data saturates the validation accuracy: several epochs tie, so the loss decides
    assert len(tied) >= 2
    assert clf.info["best_val_acc"] == best
    assert clf.info["best_epoch"] == min(tied, key=lambda r: (r["val_loss"], r["epoch"]))["epoch"]
    # an epoch improves exactly when it beats every earlier one by accuracy, or ties it with a lower loss
    for i, r in enumerate(lines):
        prev = [(q["val_acc"], -q["val_loss"]) for q in lines[:i]]
        assert r["improved"] == (not prev or (r["val_acc"], -r["val_loss"]) > max(prev)), r
    # patience 3: a run that stopped before its 12 epochs did so 3 epochs after its last improvement
    if len(lines) < 12:
        assert [r["improved"] for r in lines[-3:]] == [False, False, False]
        assert clf.info["best_epoch"] == len(lines) - 3
    assert load_classifier(work / "best").classes == CLASSES


def test_resume_continues_from_the_last_checkpoint(small, tmp_path):
    train, val, test = small
    opts = dict(preset="tiny", seed=7, epochs=3, patience=10, min_epochs=3, **FAST)
    full = train_classifier(train, val, work_dir=tmp_path / "a", **opts)

    def interrupt(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(train, val, work_dir=tmp_path / "b", on_epoch=interrupt, **opts)
    assert len((tmp_path / "b" / LOG_FILE).read_text().splitlines()) == 1
    seen: list[int] = []
    resumed = train_classifier(train, val, work_dir=tmp_path / "b",
                               on_epoch=lambda r: seen.append(r["epoch"]), **opts)
    assert seen == [2, 3]
    a = [json.loads(s) for s in (tmp_path / "a" / LOG_FILE).read_text().splitlines()]
    b = [json.loads(s) for s in (tmp_path / "b" / LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2, 3]
    # the shared checkpoint layout of cellbench.train.checkpoint, one (the last) epoch kept
    assert json.loads((tmp_path / "b" / "checkpoints" / "latest.json").read_text())["iteration"] == 3
    assert [p.name for p in (tmp_path / "b" / "checkpoints").glob("iter_*")] == ["iter_0000003"]
    for ra, rb in zip(a, b, strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4, abs=1e-6)
    with torch.no_grad():
        assert torch.allclose(full.logits(test.images), resumed.logits(test.images), atol=1e-4)
    # A finished run is not retrained.
    seen.clear()
    again = train_classifier(train, val, work_dir=tmp_path / "b", on_epoch=lambda r: seen.append(r), **opts)
    assert seen == []
    with torch.no_grad():
        assert torch.equal(again.logits(test.images), resumed.logits(test.images))
    # Another configuration refuses the folder instead of mixing runs.
    with pytest.raises(CheckpointError, match="different classifier configuration"):
        train_classifier(train, val, work_dir=tmp_path / "b", **dict(opts, lr=0.1))


def test_wrong_folders_raise_checkpoint_error_naming_the_file(trained, tmp_path):
    clf, _ = trained
    with pytest.raises(CheckpointError, match=META_FILE):
        load_classifier(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=META_FILE):
        load_classifier(tmp_path / "empty")
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=META_FILE):
        load_classifier(bad)
    other = tmp_path / "other"
    other.mkdir()
    (other / META_FILE).write_text(json.dumps({"method": "affine", "params": {}}))
    with pytest.raises(CheckpointError, match="not a cellbench classifier"):
        load_classifier(other)
    d = clf.save(tmp_path / "m")
    (d / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_classifier(d)
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_classifier(d)
    # weights of a 4-class net under a meta that claims 3 classes
    d2 = clf.save(tmp_path / "m2")
    meta = json.loads((d2 / META_FILE).read_text())
    meta["classes"] = CLASSES[:3]
    (d2 / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_classifier(d2)


def test_config_errors(data, tmp_path):
    with pytest.raises(ConfigError, match="unknown classifier option"):
        classifier_config("quick", learning_rate=1)
    with pytest.raises(ConfigError, match="no preset"):
        classifier_config("huge")
    with pytest.raises(MissingWeightsError):
        classifier_config("quick", pretrained=True)
    with pytest.raises(MissingWeightsError, match="not found"):
        train_classifier(data[0], data[1], preset="tiny", pretrained_path=tmp_path / "no.pt", **FAST)
    with pytest.raises(ConfigError, match="unknown timm architecture"):
        WBCClassifier("no_such_net", CLASSES, 32)
    odd = LabelledSet(data[1].images[:2], ["basophil", "basophil"])
    with pytest.raises(DatasetError, match="basophil"):
        train_classifier(data[0], odd, preset="tiny", **FAST)
    with pytest.raises(DatasetError, match="basophil"):
        evaluate_classifier(WBCClassifier("test_resnet", CLASSES, 32), odd)


def test_pretrained_path_loads_local_backbone(trained, data, tmp_path):
    clf, _ = trained
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in clf.net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    # epochs=1 with lr ~ 0: the loaded backbone survives; an untrained net would be near chance.
    warm = train_classifier(data[1], data[1], preset="tiny", epochs=1, lr=1e-9, pretrained=True,
                            pretrained_path=tmp_path / "w.safetensors", **FAST)
    assert evaluate_classifier(warm, data[2])["accuracy"] >= 0.9


def test_presets_quick_and_paper_exist():
    import timm

    assert {"quick", "paper", "tiny"} <= set(preset_names("classifier"))
    for name in ("quick", "paper"):
        cfg = classifier_config(name)
        assert timm.is_model(cfg["arch"])
        assert cfg["pretrained"] is False and cfg["colour_jitter"] == 0
        for key in ("input_size", "epochs", "batch_size", "lr", "patience"):
            assert cfg[key] > 0


@pytest.mark.realdata
def test_api_on_real_pbc_images(pbc_dir, tmp_path):
    from cellbench.data.folders import LabelledFolder

    folder = LabelledFolder(pbc_dir)
    data = folder.load("train", size=256, limit_per_class=20)
    test = folder.load("test", size=256, limit_per_class=10)
    assert len(data) == 160 and len(set(data.labels)) == 8 and len(test) == 80
    clf = train_classifier(data, data, preset="tiny", epochs=8, input_size=64, work_dir=tmp_path / "w",
                           **FAST)
    assert clf.classes == sorted(set(data.labels))
    res = evaluate_classifier(clf, test)
    assert res["n"] == 80 and np.array(res["confusion"]).sum() == 80
    # 8 epochs of the tiny network on 20 images per class reach 0.78 on held-out test images (about
    # 15 s on 1 core); chance is 1/8, and a network fed wrong labels or channels stays near it
    assert res["accuracy"] >= 0.5, res["accuracy"]
    assert clf.predict(data.images).shape == (160,)
    assert clf.features(data.images[:4]).shape == (4, clf.feature_dim)
    back = load_classifier(tmp_path / "w" / "best")
    with torch.no_grad():
        assert torch.equal(back.logits(data.images[:4]), clf.logits(data.images[:4]))


def test_config_checks_ranges_and_suggests_names():
    for key, value in (("epochs", 0), ("lr", 0.0), ("label_smoothing", 1.5), ("batch_size", 2.5),
                       ("geometric_aug", "sometimes")):
        with pytest.raises(ConfigError, match=key):
            classifier_config("tiny", **{key: value})
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        classifier_config("tiny", epoch=3)


def test_classifier_inputs_may_be_uint8_with_the_float_values():
    """The paired track keeps its val and test splits as stored uint8 images: the classifier's input stack and
    its predictions are those of the float copy (k / 255)."""
    from cellbench.nets.classifier import WBCClassifier
    from cellbench.train.classifier import _resized_uint8

    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8, generator=g)
    f = u8.float().div_(255.0)
    assert torch.equal(_resized_uint8(u8, 32, chunk=2), _resized_uint8(f, 32, chunk=3))
    torch.manual_seed(0)
    clf = WBCClassifier("test_resnet", ["a", "b"], 32).eval()
    assert torch.equal(clf.predict(u8), clf.predict(f))
    assert torch.equal(clf.embed(u8), clf.embed(f))
