"""Trainers: both frameworks train, log, sample, checkpoint, resume exactly, and fail early and clearly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cellbench.data.sets import LabelledSet, PairedSet, UnpairedSet
from cellbench.errors import CheckpointError, ConfigError, MissingWeightsError
from cellbench.methods import create_normalizer, load_normalizer
from cellbench.nets.features import VGG16_FILE, VGG16Features
from cellbench.train import CCGANTrainer, PCNetTrainer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (restored after each test)

TINY = dict(
    gen_widths=[4, 8],
    gen_up_kernel=3,
    head_channels=4,
    crop_size=32,
    batch_size=2,
    iterations=4,
    checkpoint_every=2,
    sample_every=2,
    progress=False,
    lr=1e-3,
)
TINY_D = dict(disc_widths=[4, 4, 4, 4])


def paired_data(n=6, size=48, seed=0) -> PairedSet:
    """Y is a fixed nonlinear colour map of X plus structure: a learnable toy pair of systems."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    m = torch.tensor([[0.9, 0.1, 0.0], [0.05, 0.8, 0.1], [0.0, 0.2, 0.7]])
    y = torch.einsum("ij,njhw->nihw", m, x).clamp(0, 1) ** 1.3
    return PairedSet(x=x, y=y, labels=["neutrophil"] * n)


def make(method, **kw):
    extra = TINY_D if method == "ccgan" else {}
    return create_normalizer(method, None, **{**TINY, **extra, **kw})


def weights_of(norm):
    return {k: v.clone() for k, v in norm.state_dict().items()}


@pytest.fixture
def vgg_cache(tmp_path, monkeypatch):
    """A random VGG-16 (convolutional part) in a temporary torch hub cache."""
    old = torch.hub.get_dir()
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(VGG16Features().features.state_dict(), hub / "checkpoints" / VGG16_FILE)
    torch.hub.set_dir(str(hub))
    yield hub
    torch.hub.set_dir(old)


def test_ccgan_trains_logs_samples_and_checkpoints(tmp_path):
    data = paired_data()
    norm = make("ccgan")
    norm.bind_run_dir(tmp_path / "run")
    norm.fit(data, seed=0)
    log = [json.loads(s) for s in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4]
    for key in ("D_x", "D_y", "G_gen", "G_cycle", "G_identity", "G_paired", "F_total"):
        assert all(torch.isfinite(torch.tensor(r[key])) for r in log)
    # eq. (1) at iteration 1: an untrained PatchGAN gives real and fake the same probability p, and
    # -ln(p)/2 - ln(1-p)/2 >= ln 2 (equality at p = 1/2); a sign or weighting error breaks this
    assert math.log(2) - 0.02 <= log[0]["D_x"] < 1.5 and log[0]["G_paired"] > 0
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "iter_0000002.png",
        "iter_0000004.png",
    ]
    ck = tmp_path / "run" / "checkpoints"
    latest = json.loads((ck / "latest.json").read_text())
    assert latest == {"iteration": 4, "path": "iter_0000004"}
    files = sorted(p.name for p in (ck / "iter_0000004").iterdir())
    assert files == ["meta.json", "rng_rank0.pt", "state.pt", "weights.safetensors"]
    torch.load(ck / "iter_0000004" / "state.pt", weights_only=True)  # loadable without pickle code
    assert not list(ck.glob(".tmp-*"))
    # transform: shape, range, and a 256 image works (fully convolutional)
    out = norm.transform(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64) and 0 <= out.min() and out.max() <= 1


def test_training_reduces_the_paired_loss():
    data = paired_data()
    norm = make("ccgan", iterations=40, checkpoint_every=1000, lr=3e-3)
    before = (norm.G_xy.eval()(data.x) - data.y).abs().mean()
    norm.fit(data, seed=0)
    after = (norm.transform(data.x) - data.y).abs().mean()
    assert after < 0.8 * before


def test_same_seed_same_weights_and_other_seed_differs():
    data = paired_data()
    a = weights_of(make("ccgan", iterations=2).fit(data, seed=1))
    b = weights_of(make("ccgan", iterations=2).fit(data, seed=1))
    c = weights_of(make("ccgan", iterations=2).fit(data, seed=2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("method,extra", [("ccgan", {}), ("pcnet", {}), ("ccgan", {"ema_decay": 0.9})])
def test_resume_continues_exactly(tmp_path, method, extra, monkeypatch, vgg_cache):
    data = paired_data()
    full = make(method, iterations=5, **extra)
    full.bind_run_dir(tmp_path / "full")
    want = weights_of(full.fit(data, seed=0))

    trainer_cls = CCGANTrainer if method == "ccgan" else PCNetTrainer
    real_step = trainer_cls.train_step

    def crash_at_4(self, x, y):
        if self.iteration == 3:
            raise KeyboardInterrupt  # interrupted after the checkpoint at iteration 2
        return real_step(self, x, y)

    monkeypatch.setattr(trainer_cls, "train_step", crash_at_4)
    first = make(method, iterations=5, **extra)
    first.bind_run_dir(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        first.fit(data, seed=0)
    monkeypatch.setattr(trainer_cls, "train_step", real_step)
    assert json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())["iteration"] == 2

    resumed = make(method, iterations=5, **extra)
    resumed.bind_run_dir(tmp_path / "cut", resume=True)
    got = weights_of(resumed.fit(data, seed=0))
    assert set(got) == set(want)
    for k in want:
        assert torch.allclose(got[k].float(), want[k].float(), atol=1e-6, rtol=0), k
    log = [
        json.loads(s)["iteration"] for s in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()
    ]
    assert log == [1, 2, 3, 4, 5]  # lines past the checkpoint were dropped, none repeated


def test_resume_with_another_architecture_is_a_clear_error(tmp_path):
    data = paired_data()
    a = make("ccgan", iterations=2)
    a.bind_run_dir(tmp_path / "run")
    a.fit(data, seed=0)
    b = make("ccgan", iterations=4, gen_widths=[4, 4])
    b.bind_run_dir(tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="another architecture or preset.*gen_widths"):
        b.fit(data, seed=0)
    # a damaged checkpoint is a CheckpointError too
    (tmp_path / "run" / "checkpoints" / "iter_0000002" / "state.pt").write_bytes(b"junk")
    c = make("ccgan", iterations=4)
    c.bind_run_dir(tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        c.fit(data, seed=0)


def test_save_load_roundtrip(tmp_path):
    data = paired_data()
    norm = make("ccgan", iterations=2).fit(data, seed=0)
    norm.save(tmp_path / "m")
    loaded = load_normalizer(tmp_path / "m")
    x = torch.rand(2, 3, 40, 56)  # not a multiple of 4: padded inside
    assert torch.equal(loaded.transform(x), norm.transform(x))
    other = create_normalizer("ccgan", None, **{**TINY, **TINY_D, "gen_widths": [4, 4]})
    with pytest.raises(CheckpointError, match="does not match"):
        other.load_state_dict(norm.state_dict())


def test_unpaired_mode_both_frameworks(tmp_path, vgg_cache):
    data = paired_data()
    shuffled = data.y[torch.randperm(len(data), generator=torch.Generator().manual_seed(0))]
    unpaired = UnpairedSet(
        x=LabelledSet(data.x, list(data.labels)), y=LabelledSet(shuffled, list(data.labels))
    )
    for method in ("ccgan", "pcnet"):
        norm = make(method, iterations=2)
        norm.bind_run_dir(tmp_path / method)
        norm.fit(unpaired, seed=0)
        log = [json.loads(s) for s in (tmp_path / method / "train_log.jsonl").read_text().splitlines()]
        assert all(r["G_paired"] == 0.0 and r["F_paired"] == 0.0 for r in log)  # no paired loss
        if method == "pcnet":  # the unpaired Gram style loss (eq. 8) is computed: positive and finite
            assert all(0 < r["G_feat"] < float("inf") for r in log)
    with pytest.raises(ConfigError, match="registered pairs"):
        make("ccgan", mode="paired").fit(unpaired)


def test_pcnet_without_vgg_weights_fails_before_training(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "empty_hub"))
    try:
        norm = make("pcnet")
        norm.bind_run_dir(tmp_path / "run")
        with pytest.raises(MissingWeightsError, match="--feature-net classifier"):
            norm.fit(paired_data())
    finally:
        torch.hub.set_dir(old)
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


def test_pcnet_with_classifier_features(tmp_path):
    from cellbench.nets.classifier import WBCClassifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        WBCClassifier("test_resnet", ["a", "b"], 32).save(tmp_path / "clf")
    norm = make("pcnet", iterations=2, feature_net="classifier", classifier_dir=str(tmp_path / "clf"))
    norm.bind_run_dir(tmp_path / "run")
    norm.fit(paired_data(), seed=0)
    log = [json.loads(s) for s in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    # the feature loss runs on the classifier's features: positive (G(x) != y) and finite
    assert all(0 < r["G_feat"] < float("inf") for r in log)


def test_bad_options_fail_early():
    with pytest.raises(ConfigError, match="unknown option"):
        create_normalizer("ccgan", "quick", colour="red")
    with pytest.raises(ConfigError, match="multiple of 4"):
        make("ccgan", crop_size=30).fit(paired_data())
    with pytest.raises(ConfigError, match="larger than the training images"):
        make("ccgan", crop_size=64).fit(paired_data(size=48))
    with pytest.raises(ConfigError, match="mode"):
        make("ccgan", mode="both")


def test_streaming_from_the_simulator():
    """Trained on the simulator's stream, ccGAN gets exactly the generator it gets from the same pairs held in
    memory (the stream yields the same pairs, tests/test_sim.py), and G_xy moves towards Y: closer than the
    untrained generator and than raw X."""
    from cellbench.sim import SimulatedPairs, simulate_pairs

    pairs = simulate_pairs(4, size=48, seed=0)
    fitted = {}
    for source in ("stream", "memory"):
        norm = make("ccgan", iterations=150, crop_size=32, checkpoint_every=1000, sample_every=1000, lr=3e-3)
        if source == "stream":
            with torch.no_grad():
                before = (norm.G_xy.eval()(pairs.x).clamp(0, 1) - pairs.y).abs().mean()
        norm.fit(SimulatedPairs(4, size=48, seed=0) if source == "stream" else pairs, seed=0)
        fitted[source] = norm.transform(pairs.x)
    assert torch.equal(fitted["stream"], fitted["memory"])
    after = (fitted["stream"] - pairs.y).abs().mean()
    raw = (pairs.x - pairs.y).abs().mean()
    assert after < 0.8 * before and after < 0.7 * raw, (float(before), float(after), float(raw))


def test_normalized_gram_for_other_feature_networks():
    """feature_norm="auto": every Gram matrix has unit Frobenius norm, so eq. (8) lies in [0, 4]."""
    from cellbench.nets import UNetGenerator
    from cellbench.train import PCNetTrainer, PCNetWeights, TrainConfig

    phi = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.ReLU())
    gens = (UNetGenerator([4]), UNetGenerator([4]))
    tr = PCNetTrainer(
        gens,
        phi,
        TrainConfig(iterations=1, batch_size=2),
        weights=PCNetWeights(),
        paired=True,
        signature={},
        device="cpu",
    )
    x = torch.rand(3, 3, 16, 16) * 7
    assert not torch.allclose(tr.gram(x).flatten(1).norm(dim=1), torch.ones(3))
    tr.normalize_gram = True
    assert torch.allclose(tr.gram(x).flatten(1).norm(dim=1), torch.ones(3), atol=1e-5)
    tr.paired = False
    assert tr.gram(x).shape == (5, 5) and tr.gram(x).norm().item() == pytest.approx(1.0, abs=1e-5)


def test_pcnet_unpaired_feature_weight(tmp_path, vgg_cache):
    """lambda_feat_unpaired replaces lambda_feat only without pairs: the logged total is eq. (7)
    with the weight that applies (cycle, identity and the Gram term recomputed from the log)."""
    data = paired_data()
    unpaired = UnpairedSet(x=LabelledSet(data.x, list(data.labels)), y=LabelledSet(data.y, list(data.labels)))
    for kind, train, want in (("unpaired", unpaired, 7.0), ("paired", data, 0.5)):
        norm = make("pcnet", iterations=2, lambda_feat=0.5, lambda_feat_unpaired=7.0)
        norm.bind_run_dir(tmp_path / kind)
        norm.fit(train, seed=0)
        for r in (json.loads(s) for s in (tmp_path / kind / "train_log.jsonl").read_text().splitlines()):
            expect = 10 * (r["G_cycle"] + r["G_identity"] + r["G_paired"]) + want * r["G_feat"]
            assert r["G_total"] == pytest.approx(expect, rel=1e-4), kind


def test_crop_focus_draws_stained_content():
    """focus=1 centres every crop on a dark (stained) block; focus=0 draws uniformly; both stay
    seeded and in bounds."""
    from cellbench.train.data import BatchSource, content_weights

    x = torch.full((4, 3, 64, 64), 0.9)
    x[:, :, 40:56, 8:24] = 0.2  # one dark "cell" per image: 6 % of the area
    w = content_weights(x)
    assert w.shape == (4, 64) and w.argmax(1).tolist() == [5 * 8 + 1] * 4 and float(w.min()) == 0.0

    def dark_fraction(focus, seed=0):
        src = BatchSource(x, x.clone(), paired=True, batch_size=256, crop=16, seed=seed, focus=focus)
        a, b = src.next_batch()
        assert torch.equal(a, b) and a.shape == (256, 3, 16, 16)
        return float((a.amin(dim=(1, 2, 3)) < 0.5).float().mean())

    assert dark_fraction(1.0) == 1.0
    assert dark_fraction(0.0) < 0.5
    assert 0.4 < dark_fraction(0.5) < 1.0
    assert dark_fraction(1.0, seed=3) == dark_fraction(1.0, seed=3)
    with pytest.raises(ConfigError, match="crop_focus"):
        BatchSource(x, x, paired=True, batch_size=2, crop=16, seed=0, focus=1.5)


def test_crop_focus_unpaired_replaces_the_focus_of_unpaired_sources():
    from cellbench.train.data import make_source

    x = torch.rand(4, 3, 64, 64)
    pairs = PairedSet(x=x, y=x.clone(), labels=["a"] * 4)
    unpaired = UnpairedSet(
        x=LabelledSet(images=x, labels=["a"] * 4), y=LabelledSet(images=x.clone(), labels=["a"] * 4)
    )
    kw = dict(batch_size=2, crop=16, seed=0, focus=0.5)
    assert make_source(pairs, paired=None, focus_unpaired=0.0, **kw)[0].focus == 0.5
    assert make_source(unpaired, paired=None, focus_unpaired=0.0, **kw)[0].focus == 0.0
    assert make_source(unpaired, paired=None, **kw)[0].focus == 0.5  # None: the same as focus
    assert make_source(pairs, paired=False, focus_unpaired=0.25, **kw)[0].focus == 0.25  # mode="unpaired"
    norm = make("pcnet", crop_focus=0.5, crop_focus_unpaired=0.0)
    assert norm.batch_source(unpaired, 0)[0].focus == 0.0 and norm.batch_source(pairs, 0)[0].focus == 0.5


def test_bn_freeze_keeps_the_running_statistics_from_the_freeze_on(tmp_path):
    """bn_freeze_from=0.5 of 4 iterations: the generators' batch-norm statistics stop at iteration 2
    (equal to a 2-iteration run's), while their weights keep training; without it they move on."""

    def fit(iterations, **kw):
        norm = make("ccgan", iterations=iterations, **kw)
        norm.bind_run_dir(tmp_path / f"{iterations}-{kw}")
        norm.fit(paired_data(), seed=0)
        return weights_of(norm)

    two, frozen, free = fit(2), fit(4, bn_freeze_from=0.5), fit(4)
    stats = [k for k in two if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in two if k.endswith("weight")]
    assert stats and weights
    assert all(torch.equal(frozen[k], two[k]) for k in stats)
    assert not all(torch.equal(free[k], two[k]) for k in stats)
    assert not all(torch.equal(frozen[k], two[k]) for k in weights)


def test_streaming_focus_weights_follow_the_pool():
    """The focus weights of a streaming pool are recomputed for every appended or replaced pair."""
    from cellbench.train.data import StreamingSource, content_weights

    g = torch.Generator().manual_seed(0)
    pairs = ({"x": torch.rand(3, 32, 32, generator=g), "y": torch.rand(3, 32, 32, generator=g)} for _ in range(12))
    src = StreamingSource(pairs, paired=False, batch_size=2, crop=16, seed=0, pool_size=4, focus=0.5)
    for _ in range(6):  # past the pool size: replacements happen
        src.next_batch()
    assert torch.allclose(src.wx, content_weights(src.x)) and torch.allclose(src.wy, content_weights(src.y))


def test_ema_generators_average_the_trained_ones():
    data = paired_data()
    norm = make("ccgan", iterations=3, ema_decay=0.5)
    source, paired = norm.batch_source(data, 0)
    tr = norm.build_trainer(paired, 0)
    params = {k for k, _ in tr.nets["G_xy"].named_parameters()}
    want = {k: v.clone() for k, v in tr.nets["G_xy"].state_dict().items()}
    real_update = tr.update_ema

    def spy():  # the trained generator after each iteration's steps, then the real update
        t = tr.iteration
        d = min(0.5, (1 + t) / (10 + t))  # warm-up: 0.1, 0.18, 0.25
        for k, v in tr.nets["G_xy"].state_dict().items():
            want[k] = d * want[k] + (1 - d) * v if k in params else v.clone()
        real_update()

    tr.update_ema = spy
    tr.fit(source)
    got = tr.result("G_xy").state_dict()
    assert tr.result("G_xy") is tr.ema["G_xy"] and tr.result("D_x") is tr.nets["D_x"]
    for k in want:
        assert torch.allclose(got[k].float(), want[k].float(), atol=1e-6), k
    live = tr.nets["G_xy"].state_dict()
    assert any(not torch.allclose(got[k], live[k]) for k in params)  # it is not the last iterate
    # the normalizer returns the averaged generators
    fitted = make("ccgan", iterations=3, ema_decay=0.5).fit(data, seed=0)
    assert all(torch.equal(fitted.G_xy.state_dict()[k], got[k]) for k in got)
    with pytest.raises(ConfigError, match="ema_decay"):
        make("ccgan", ema_decay=1.5).fit(data, seed=0)


def test_net_config_checks_every_option_and_keeps_the_presets():
    """The typed NetConfig: each preset loads unchanged; a bad value names the option (no 1/0 later)."""
    from cellbench.methods.ccgan import CCGANConfig
    from cellbench.methods.pcnet import PCNetConfig
    from cellbench.presets import load_preset, preset_names

    for method, cls in (("ccgan", CCGANConfig), ("pcnet", PCNetConfig)):
        for preset in preset_names(method):
            values = load_preset(method, preset)
            norm = create_normalizer(method, preset)
            assert isinstance(norm.config, cls)
            for k, v in values.items():  # the preset's values reach the config, lists as tuples
                assert getattr(norm.config, k) == (tuple(v) if isinstance(v, list) else v), (preset, k)
    assert PCNetConfig().batch_size == 2 and CCGANConfig().batch_size == 4  # the paper's batches
    bad = {
        "checkpoint_every": 0,  # was a ZeroDivisionError at the first iteration
        "iterations": -1,
        "batch_size": 2.5,
        "gen_widths": [16, 0],
        "lr": 0.0,
        "lr_decay_from": 1.5,
        "crop_focus": -0.1,
        "beta1": 1.0,
        "amp": "fp8",
        "upsample": "cubic",
        "device": "gpu",
        "rotate": "maybe",
        "tile_overlap": 256,
    }
    for key, value in bad.items():
        with pytest.raises(ConfigError, match=key):
            make("ccgan", **{key: value})
    with pytest.raises(ConfigError, match="disc_strides"):
        make("ccgan", disc_strides=[2, 2])
    with pytest.raises(ConfigError, match="feature_norm"):
        make("pcnet", feature_norm="l2")
    with pytest.raises(ConfigError, match="did you mean 'lambda_feat'"):
        make("pcnet", lamda_feat=1.0)
    with pytest.raises(ConfigError, match="unknown option.*lambda_feat"):
        make("ccgan", lambda_feat=1.0)  # pcNet's option is not ccGAN's


def test_saved_options_load_into_the_same_config(tmp_path):
    norm = make("pcnet", iterations=1)
    norm.fitted = True
    norm.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "normalizer.json").read_text())["params"]
    assert saved["gen_widths"] == [4, 8] and saved["batch_size"] == 2
    assert load_normalizer(tmp_path / "m").config == norm.config


def test_distributed_setup_is_explicit(monkeypatch):
    """Outside torchrun setup_distributed is a no-op; under torchrun a trainer never joins a group itself."""
    from cellbench.train import setup_distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = setup_distributed("cpu")
    assert (info.rank, info.world_size, info.enabled, info.owns_group) == (0, 1, False, False)
    norm = make("ccgan")
    assert norm.rank == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="setup_distributed"):
        norm.build_trainer(True, 0)
    assert not torch.distributed.is_initialized()
