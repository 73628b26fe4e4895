"""Batch-norm consistency helpers (cellbench.nets.batchnorm): precise BN, the train/eval gap, momentum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cellbench.nets import UNetGenerator
from cellbench.nets.batchnorm import (
    batch_norms,
    bn_gap,
    precise_bn,
    preserved_state,
    set_bn_momentum,
    train_eval_outputs,
)


def _batches_with_shifted_means(seed: int = 0) -> list[torch.Tensor]:
    """Four batches whose means differ (offset k per batch): the pooled variance then exceeds the
    mean of the per-batch variances, which tells the two estimators apart."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) * (1 + k) + 2.0 * k for k in range(4)]


def test_precise_bn_sets_the_pooled_population_statistics():
    bn = nn.BatchNorm2d(2).double()
    batches = _batches_with_shifted_means()
    assert precise_bn(bn, batches) == 4
    # reference: numpy mean and unbiased variance of all activations pooled, per channel
    pooled = np.concatenate([b.numpy().transpose(1, 0, 2, 3).reshape(2, -1) for b in batches], axis=1)
    np.testing.assert_allclose(bn.running_mean.numpy(), pooled.mean(1), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), pooled.var(1, ddof=1), rtol=1e-12)
    # and not the average of per-batch variances (what a cumulative moving average gives)
    avg_batch_var = np.mean([b.numpy().transpose(1, 0, 2, 3).reshape(2, -1).var(1, ddof=1) for b in batches], 0)
    assert np.all(bn.running_var.numpy() > 1.5 * avg_batch_var)


def test_precise_bn_feeds_downstream_layers_batch_normalised_inputs():
    """The second layer's statistics are those of its inputs in training mode (the first layer
    normalising with each batch's own statistics), as Wu & Johnson's precise BN prescribes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)).double()
    batches = _batches_with_shifted_means(1)
    precise_bn(net, batches)
    with torch.no_grad():
        mids = []
        for b in batches:  # reference: layer 1 with batch statistics (biased variance, eps 1e-5)
            mu, var = b.mean((0, 2, 3), keepdim=True), b.var((0, 2, 3), unbiased=False, keepdim=True)
            mids.append(net[1]((b - mu) / torch.sqrt(var + 1e-5)))
    pooled = torch.cat([m.transpose(0, 1).reshape(3, -1) for m in mids], dim=1)
    torch.testing.assert_close(net[2].running_mean, pooled.mean(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(net[2].running_var, pooled.var(1), rtol=1e-10, atol=1e-12)


def test_precise_bn_changes_only_running_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.01), nn.ReLU()).eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    precise_bn(net, [torch.rand(2, 3, 8, 8) for _ in range(3)], max_batches=2)
    assert not net.training and not net[1].training
    assert net[1].momentum == 0.01
    assert int(net[1].num_batches_tracked) == 0
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert precise_bn(nn.Conv2d(3, 3, 1), [torch.rand(1, 3, 4, 4)]) == 0  # nothing to do
    before = net[1].running_mean.clone()
    assert precise_bn(net, []) == 0 and torch.equal(net[1].running_mean, before)


def test_train_eval_outputs_leave_buffers_modes_and_rng_untouched():
    torch.manual_seed(0)
    gen = UNetGenerator((4, 8, 8), kernel_size=3, up_kernel_size=3)
    gen.train()
    gen.decoders[0].eval()  # a mixed mode must be restored too
    buffers = {k: v.clone() for k, v in gen.state_dict().items()}
    modes = [m.training for m in gen.modules()]
    x = torch.rand(3, 3, 16, 16)
    rng = torch.get_rng_state()
    train_out, eval_out = train_eval_outputs(gen, x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in gen.modules()] == modes
    for k, v in gen.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    with torch.no_grad():
        assert torch.equal(eval_out, gen.eval()(x))
    assert not train_out.requires_grad and (train_out - eval_out).abs().mean() > 1e-3


def test_precise_bn_on_one_batch_closes_the_generator_gap():
    """With the population equal to one batch, inference statistics equal that batch's
    statistics, so the eval-mode output matches the train-mode output (up to the unbiased
    variance factor n / (n - 1), n = 16 copies x 4 images x 2x2 at the innermost level); with the
    initial running statistics (0, 1) it does not."""
    torch.manual_seed(0)
    gen = UNetGenerator((4, 8, 8, 8), kernel_size=5, up_kernel_size=5)
    x = torch.rand(4, 3, 32, 32)
    before = bn_gap(gen, x)
    assert before["l1"] > 0.01
    precise_bn(gen, [x] * 16)
    after = bn_gap(gen, x, rows=2)
    assert after["l1"] < 2e-3 < before["l1"] / 10


def test_bn_gap_reports_the_colour_difference_on_the_selected_rows():
    torch.manual_seed(0)
    gen = UNetGenerator((4, 8), kernel_size=3, up_kernel_size=3)
    x = torch.rand(4, 3, 8, 8)
    seen = []

    def diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append(a.shape)
        return (a - b).abs().sum(1)

    gap = bn_gap(gen, x, rows=2, colour_difference=diff)
    assert seen == [torch.Size([2, 3, 8, 8])]
    train_out, eval_out = train_eval_outputs(gen, x)
    assert gap["l1"] == pytest.approx(float((train_out[:2] - eval_out[:2]).abs().mean()), rel=1e-6)
    assert gap["de00"] == pytest.approx(3 * gap["l1"], rel=1e-5)


def test_set_bn_momentum_keras_semantics():
    """Keras BatchNormalization(momentum=0.99) keeps 99 % of the running mean per batch: PyTorch's 0.01."""
    bn = nn.BatchNorm2d(1)
    assert set_bn_momentum(nn.Sequential(bn, nn.ReLU(), nn.BatchNorm1d(2)), 0.01) == 2
    bn(torch.full((2, 1, 2, 2), 5.0))
    assert float(bn.running_mean) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        set_bn_momentum(bn, 1.5)
    assert set_bn_momentum(bn, None) == 1 and bn.momentum is None


def test_preserved_state_restores_after_an_error():
    bn = nn.BatchNorm2d(2).eval()
    with pytest.raises(RuntimeError), preserved_state(bn):
        bn.train()(torch.rand(2, 2, 3, 3) + 4)
        raise RuntimeError("interrupted")
    assert not bn.training and torch.equal(bn.running_mean, torch.zeros(2))
    assert len(batch_norms(nn.Sequential(bn, nn.Conv2d(2, 2, 1)))) == 1


# --------------------------------------------------------------------------- in the trainers

TINY = dict(gen_widths=[4, 8], gen_up_kernel=3, head_channels=4, disc_widths=[4, 4, 4, 4], crop_size=32,
            batch_size=2, iterations=4, checkpoint_every=2, sample_every=2, progress=False, lr=1e-3, device="cpu")


def _pairs(n: int = 6, size: int = 48):
    from cellbench.data.sets import PairedSet

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, size // 8, size // 8, generator=g), size=(size, size),
                                        mode="bilinear", align_corners=False)
    return PairedSet(x=x, y=(x * torch.tensor([0.9, 0.7, 0.8]).view(1, 3, 1, 1)) ** 1.3, labels=["neutrophil"] * n)


def _ccgan(**kw):
    from cellbench.methods import create_normalizer

    return create_normalizer("ccgan", None, **{**TINY, **kw})


def _log(run_dir) -> list[dict]:
    import json

    return [json.loads(s) for s in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_trainer_logs_the_gap_without_changing_the_run(tmp_path, one_thread):
    from cellbench.eval.image import ciede2000, rgb_to_lab

    data = _pairs()
    logged = _ccgan(sample_every=2)
    logged.bind_run_dir(tmp_path / "a")
    logged.fit(data, seed=0)
    lines = _log(tmp_path / "a")
    assert [("bn_gap_l1" in r, "bn_gap_de00" in r) for r in lines] == [(False, False), (True, True)] * 2
    assert all(r["bn_gap_l1"] > 0 and r["bn_gap_de00"] > 0 for r in lines[1::2])
    # the logged CIEDE2000 is the metric of cellbench.eval.image (the trainer gets it injected):
    # at the last iteration it compares the final G_xy in both modes on the fixed sample batch
    from cellbench.train.data import BatchSource

    x, y = BatchSource(data.x, data.y, paired=True, batch_size=2, crop=32, seed=0).fixed_batch(4)
    G, F = logged.G_xy, logged.G_yx
    train_out, eval_out = train_eval_outputs(G, torch.cat([x, F.eval()(y), y]))
    want = float(ciede2000(rgb_to_lab(train_out[:4].clamp(0, 1)), rgb_to_lab(eval_out[:4].clamp(0, 1))).mean())
    assert lines[-1]["bn_gap_de00"] == pytest.approx(want, rel=1e-4)
    # measuring the gap draws no random numbers and leaves the statistics alone: same weights
    quiet = _ccgan(sample_every=0)
    quiet.bind_run_dir(tmp_path / "b")
    quiet.fit(data, seed=0)
    assert [("bn_gap_l1" in r) for r in _log(tmp_path / "b")] == [False, False, False, True]
    for k, v in logged.state_dict().items():
        assert torch.equal(v, quiet.state_dict()[k]), k


def test_precise_bn_after_training_is_deterministic_and_resumable(tmp_path, one_thread, monkeypatch):
    from cellbench.train import CCGANTrainer

    data = _pairs()
    full = _ccgan(precise_bn_batches=3)
    full.bind_run_dir(tmp_path / "full")
    want = {k: v.clone() for k, v in full.fit(data, seed=0).state_dict().items()}
    plain = _ccgan().fit(data, seed=0).state_dict()
    for k, v in want.items():  # precise BN changes the running statistics only
        stats = "running_" in k
        assert torch.equal(v, plain[k]) != stats, k

    real_step = CCGANTrainer.train_step

    def crash(self, x, y):
        if self.iteration == 3:
            raise KeyboardInterrupt
        return real_step(self, x, y)

    monkeypatch.setattr(CCGANTrainer, "train_step", crash)
    cut = _ccgan(precise_bn_batches=3)
    cut.bind_run_dir(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        cut.fit(data, seed=0)
    monkeypatch.setattr(CCGANTrainer, "train_step", real_step)
    resumed = _ccgan(precise_bn_batches=3)
    resumed.bind_run_dir(tmp_path / "cut", resume=True)
    got = resumed.fit(data, seed=0).state_dict()
    for k in want:
        assert torch.allclose(got[k].float(), want[k].float(), atol=1e-6, rtol=0), k
    # a finished run resumed again recomputes the same statistics from its last checkpoint
    again = _ccgan(precise_bn_batches=3)
    again.bind_run_dir(tmp_path / "full", resume=True)
    for k, v in again.fit(data, seed=0).state_dict().items():
        assert torch.allclose(v.float(), want[k].float(), atol=1e-6, rtol=0), k


def test_precise_bn_at_the_freeze_point_then_frozen_training(tmp_path, one_thread, monkeypatch):
    """bn_freeze_from with precise_bn_batches: the statistics are re-estimated once, at the freeze
    point, with that point's weights (the same statistics a run ending there re-estimates), the frozen
    iterations train the weights on them, nothing re-estimates them afterwards, the log marks the
    frozen steps, and a run cut at the freeze point resumes to the same weights."""
    from cellbench.train import CCGANTrainer

    data = _pairs()
    half = _ccgan(iterations=2, precise_bn_batches=3).fit(data, seed=0).state_dict()
    full = _ccgan(bn_freeze_from=0.5, precise_bn_batches=3, sample_every=1)
    full.bind_run_dir(tmp_path / "full")
    want = {k: v.clone() for k, v in full.fit(data, seed=0).state_dict().items()}
    plain_frozen = _ccgan(bn_freeze_from=0.5).fit(data, seed=0).state_dict()
    gens = [k for k in want if k.startswith(("G_xy.", "G_yx.")) and "running_" in k]
    assert gens
    for k in gens:  # the frozen statistics are the precise ones of the weights at the freeze point
        assert torch.allclose(want[k], half[k], atol=1e-6, rtol=0), k
        assert not torch.equal(want[k], plain_frozen[k]), k  # not training's running averages
    weights = [k for k in want if k.startswith("G_xy.") and k.endswith("weight")]
    assert not all(torch.equal(want[k], half[k]) for k in weights)  # the weights trained on
    assert [r.get("bn_frozen", 0) for r in _log(tmp_path / "full")] == [0, 0, 1, 1]
    sparse = _ccgan(bn_freeze_from=0.5, sample_every=4)  # marked on every frozen line, gap or not
    sparse.bind_run_dir(tmp_path / "sparse")
    sparse.fit(data, seed=0)
    assert [(r.get("bn_frozen", 0), "bn_gap_l1" in r) for r in _log(tmp_path / "sparse")] == [
        (0, False), (0, False), (1, False), (1, True)]

    real_step = CCGANTrainer.train_step

    def crash(self, x, y):  # in the first frozen step: the checkpoint holds the statistics before the re-estimate
        if self.iteration == 2:
            raise KeyboardInterrupt
        return real_step(self, x, y)

    monkeypatch.setattr(CCGANTrainer, "train_step", crash)
    cut = _ccgan(bn_freeze_from=0.5, precise_bn_batches=3, sample_every=1, checkpoint_every=1)
    cut.bind_run_dir(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        cut.fit(data, seed=0)
    monkeypatch.setattr(CCGANTrainer, "train_step", real_step)
    resumed = _ccgan(bn_freeze_from=0.5, precise_bn_batches=3, sample_every=1, checkpoint_every=1)
    resumed.bind_run_dir(tmp_path / "cut", resume=True)
    for k, v in resumed.fit(data, seed=0).state_dict().items():
        assert torch.allclose(v.float(), want[k].float(), atol=1e-6, rtol=0), k


def test_bn_momentum_reaches_every_trained_network():
    from cellbench.train import TrainConfig

    norm = _ccgan(bn_momentum=0.01)
    cfg = norm.train_config()
    assert isinstance(cfg, TrainConfig) and cfg.bn_momentum == 0.01
    trainer = norm.build_trainer(True, 0)
    for name in ("G_xy", "G_yx", "D_x", "D_y"):
        assert {m.momentum for m in batch_norms(trainer.nets[name])} == {0.01}, name
    assert norm.arch_signature()["bn_momentum"] == 0.01  # resuming with another momentum is refused


def test_onnx_export_of_the_paper_generator_after_precise_bn(tmp_path):
    """The paper preset's fixed generator (7 levels, precise BN) exports with the same outputs."""
    import onnxruntime as ort

    from cellbench.methods import create_normalizer
    from cellbench.nets.export import export_onnx

    norm = create_normalizer("ccgan", "paper")
    assert norm.config.precise_bn_batches > 0 and len(norm.G_xy.widths) == 7
    g = torch.Generator().manual_seed(1)
    assert precise_bn(norm.G_xy, [torch.rand(2, 3, 128, 128, generator=g) for _ in range(2)]) == 2
    assert float(norm.G_xy.encoders[-1][1].running_var.mean()) != 1.0  # statistics were re-estimated
    err = export_onnx(norm.G_xy, tmp_path / "g.onnx", size=128)
    assert err < 1e-3
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 128, 256, generator=g)  # another shape: dynamic axes
    with torch.no_grad():
        want = norm.G_xy.eval()(x).numpy()
    assert np.abs(sess.run(None, {"images": x.numpy()})[0] - want).max() < 1e-3


def test_report_curves_keep_the_sparse_gap_lines(tmp_path):
    """A 3,000-line log is strided for plotting; the gap lines (every 500 iterations, at odd indices)
    must all survive, and the figure puts them first."""
    import json

    from cellbench.report import figures
    from cellbench.report.artifacts import ARTIFACTS, load_curves

    folder = tmp_path / ARTIFACTS / "curves"
    folder.mkdir(parents=True)
    lines = []
    for it in range(1, 3001):
        rec = {"iteration": it, "seconds": 0.1, "lr": 1e-3, **{f"loss_{k}": 1.0 / it for k in range(10)}}
        if it % 500 == 0:
            rec.update(bn_gap_l1=0.01, bn_gap_de00=5.0 / it)
        lines.append(json.dumps(rec))
    (folder / "ccgan.jsonl").write_text("\n".join(lines))
    (curve,), _ = load_curves(tmp_path)
    gap = np.asarray(curve.series["bn_gap_de00"])
    assert np.isfinite(gap).sum() == 6
    assert [x for x, g in zip(curve.x, gap, strict=True) if np.isfinite(g)] == [500, 1000, 1500, 2000, 2500, 3000]
    assert len(curve.x) <= 2000 + 6
    assert figures.curve_figure(curve).startswith("data:image/png")


def test_report_curves_shade_frozen_batch_norm_instead_of_plotting_the_flag(tmp_path):
    """bn_frozen (logged with the gap once the statistics are frozen) is not a panel of its own: the
    figure shades the iterations from the first frozen one."""
    import json

    from cellbench.report import figures
    from cellbench.report.artifacts import ARTIFACTS, load_curves

    folder = tmp_path / ARTIFACTS / "curves"
    folder.mkdir(parents=True)
    lines = []
    for it in range(1, 101):
        rec = {"iteration": it, "G_total": 1.0 / it}
        if it % 10 == 0:
            rec.update(bn_gap_de00=1.0 / it, **({"bn_frozen": 1} if it > 50 else {}))
        lines.append(json.dumps(rec))
    (folder / "ccgan.jsonl").write_text("\n".join(lines))
    (curve,), _ = load_curves(tmp_path)
    assert figures.curve_panels(curve) == (["bn_gap_de00", "G_total"], 60.0)
    assert figures.curve_figure(curve).startswith("data:image/png")
    del curve.series["bn_frozen"]
    assert figures.curve_panels(curve) == (["bn_gap_de00", "G_total"], None)
