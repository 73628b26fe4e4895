"""Networks (paper sec. 5.4), losses eq. (1)-(8), feature networks, tiling, ONNX export, describe."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cellbench.errors import CheckpointError, ConfigError, MissingWeightsError
from cellbench.methods import create_normalizer
from cellbench.nets import (
    PatchDiscriminator,
    UNetGenerator,
    build_feature_net,
    count_params,
    discriminator_loss,
    feature_loss,
    generator_adversarial_loss,
    gram_matrix,
    transform_tiled,
)
from cellbench.nets.discriminator import log_mean_sigmoid
from cellbench.nets.features import VGG16_FILE, VGG16Features

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (restored after each test)


# -- architecture --------------------------------------------------------------------------------
def test_paper_presets_have_the_papers_sizes():
    """Sec. 5.4: generator ~20 M parameters (15-25 M), discriminator ~11 M (9-13 M)."""
    ccgan = create_normalizer("ccgan", "paper")
    nets = ccgan.networks()
    assert 15e6 <= count_params(nets["generator"]) <= 25e6
    assert 9e6 <= count_params(nets["discriminator"]) <= 13e6
    pcnet = create_normalizer("pcnet", "paper")
    assert count_params(pcnet.networks()["generator"]) == count_params(nets["generator"])
    assert pcnet.params["batch_size"] == 2 and ccgan.params["batch_size"] == 4
    for n in (ccgan, pcnet):
        p = n.params
        assert (p["lr"], p["beta1"], p["beta2"], p["iterations"], p["crop_size"]) == (
            2e-4,
            0.9,
            0.999,
            50000,
            256,
        )


def test_generator_blocks_follow_the_paper():
    g = UNetGenerator([8, 16, 16])
    enc = g.encoders[0]
    assert isinstance(enc[0], nn.Conv2d) and enc[0].kernel_size == (5, 5) and enc[0].stride == (2, 2)
    assert isinstance(enc[1], nn.BatchNorm2d) and isinstance(enc[2], nn.LeakyReLU)
    dec = g.decoders[0]
    assert isinstance(dec[0], nn.Upsample) and dec[0].scale_factor == 2
    assert isinstance(dec[1], nn.ConvTranspose2d) and dec[1].stride == (1, 1)
    assert isinstance(dec[2], nn.BatchNorm2d) and isinstance(dec[3], nn.ReLU)
    # skip connections: decoder 1 sees its upsampled input concatenated with encoder 1's output
    assert g.decoders[1][1].in_channels == 2 * 16


@pytest.mark.parametrize(
    "kw",
    [
        dict(widths=[4, 8]),
        dict(widths=[4, 8, 8], head_channels=4, up_kernel_size=3),
        dict(widths=[4], input_skip=False),
    ],
)
def test_generator_shapes_range_and_full_convolution(kw):
    g = UNetGenerator(**kw).eval()
    for hw in [(32, 32), (64, 96)]:
        x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
        y = g(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert y.min() >= 0 and y.max() <= 1


def test_discriminator_is_a_70x70_patchgan():
    d = PatchDiscriminator([4, 4, 4, 4]).eval()
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1] and all(c.kernel_size == (4, 4) for c in convs)
    bns = [m for m in d.body if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 3  # none in the first and the last block
    assert d.receptive_field == 70
    # measured receptive field: input pixels that influence one central output patch
    x = torch.rand(1, 3, 160, 160, requires_grad=True)
    out = d.patch_logits(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = (x.grad.abs().sum(dim=(0, 1, 3)) > 0).nonzero()
    assert int(rows.max() - rows.min() + 1) == 70
    # D = mean over patches of the sigmoid
    with torch.no_grad():
        assert torch.allclose(d(x), torch.sigmoid(d.patch_logits(x)).flatten(1).mean(1))


# -- losses --------------------------------------------------------------------------------------
def test_log_mean_sigmoid_is_stable_and_exact():
    logits = torch.tensor([[[[-3.0, 0.5], [2.0, 40.0]]], [[[-80.0, -90.0], [-85.0, -70.0]]]])
    naive = torch.log(torch.sigmoid(logits.double()).flatten(1).mean(1))
    assert torch.allclose(log_mean_sigmoid(logits).double(), naive, atol=1e-5)
    assert torch.isfinite(log_mean_sigmoid(-logits)).all()


def test_gan_losses_match_eq_1_and_2():
    """Constant patch scores p: eq. (1) = -1/2 log p_real - 1/2 log(1 - p_fake); eq. (2) = -log p_fake."""
    p_real, p_fake = 0.8, 0.3
    real = torch.full((3, 1, 5, 5), math.log(p_real / (1 - p_real)))
    fake = torch.full((3, 1, 5, 5), math.log(p_fake / (1 - p_fake)))
    assert discriminator_loss(real, fake).item() == pytest.approx(
        -0.5 * math.log(0.8) - 0.5 * math.log(0.7), rel=1e-5
    )
    assert generator_adversarial_loss(fake).item() == pytest.approx(-math.log(0.3), rel=1e-5)


def test_gram_and_feature_loss_eq_8():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 4, 3, 5, generator=g), torch.rand(2, 4, 3, 5, generator=g)
    ga = gram_matrix(a)
    ref = torch.einsum("nchw,ndhw->ncd", a, a) / (4 * 3 * 5)
    assert torch.allclose(ga, ref, atol=1e-6)
    gb = gram_matrix(b)
    want = ((ga - gb) ** 2).sum(dim=(1, 2)).mean()
    assert feature_loss(ga, gb).item() == pytest.approx(want.item(), rel=1e-6)
    assert feature_loss(ga, ga).item() == 0.0
    assert feature_loss(ga.mean(0), gb.mean(0)).item() == pytest.approx(
        ((ga.mean(0) - gb.mean(0)) ** 2).sum().item()
    )


# -- VGG-16 weights: the real loading code on a random state dict in a temporary hub cache ----------
@pytest.fixture
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _random_vgg_features(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VGG16Features()


def test_vgg16_loads_from_the_hub_cache(hub_dir):
    src = _random_vgg_features()
    (hub_dir / "checkpoints").mkdir(parents=True)
    # torchvision's full state dict uses "features.N.*" keys (here without the classifier, to stay small)
    torch.save(
        {f"features.{k}": v for k, v in src.features.state_dict().items()},
        hub_dir / "checkpoints" / VGG16_FILE,
    )
    net = build_feature_net("vgg16")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), src(x))
    assert net(x).shape == (1, 512, 2, 2)  # after the fifth max-pool: H/32
    assert not any(p.requires_grad for p in net.parameters())


def test_vgg16_weights_path_and_bare_keys(tmp_path, hub_dir):
    src = _random_vgg_features(3)
    path = tmp_path / "my_vgg.pth"
    torch.save(src.features.state_dict(), path)
    net = build_feature_net("vgg16", vgg_weights=path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), src(x))


def test_missing_vgg16_names_the_file_and_the_alternative(hub_dir):
    with pytest.raises(MissingWeightsError) as e:
        build_feature_net("vgg16")
    msg = str(e.value)
    assert VGG16_FILE in msg and str(hub_dir / "checkpoints") in msg and "--feature-net classifier" in msg


def test_corrupt_vgg16_file_is_a_checkpoint_error(tmp_path, hub_dir):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        build_feature_net("vgg16", vgg_weights=bad)
    torch.save({"0.weight": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match="not VGG-16"):
        build_feature_net("vgg16", vgg_weights=bad)


def test_classifier_feature_net(tmp_path):
    from cellbench.nets.classifier import WBCClassifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        WBCClassifier("test_resnet", ["a", "b"], 32).save(tmp_path / "clf")
    net = build_feature_net("classifier", classifier_dir=tmp_path / "clf")
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    f = net(x)
    assert f.ndim == 4 and f.shape[0] == 2
    f.sum().backward()  # differentiable with respect to the images
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="classifier_dir"):
        build_feature_net("classifier")
    with pytest.raises(ConfigError, match="unknown feature_net"):
        build_feature_net("resnet")


# -- tiled inference ---------------------------------------------------------------------------------
def test_tiling_is_exact_for_a_pointwise_net():
    net = nn.Conv2d(3, 3, 1)
    x = torch.rand(2, 3, 150, 230, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tiled = transform_tiled(net, x, tile=64, overlap=16, multiple=1)
        assert torch.allclose(tiled, net(x), atol=1e-5)


def test_tiling_has_no_seams_on_a_unet():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = UNetGenerator([8, 8, 8]).eval()
    # a smooth image with texture, bigger than one tile, not a multiple of 8
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 181), torch.linspace(0, 1, 263), indexing="ij")
    img = torch.stack([0.5 + 0.3 * torch.sin(9 * xx), 0.5 + 0.3 * torch.cos(7 * yy), 0.4 + 0.2 * xx * yy])[
        None
    ]
    with torch.no_grad():
        whole = transform_tiled(g, img, tile=1024, multiple=g.multiple)
        tiled = transform_tiled(g, img, tile=64, overlap=32, multiple=g.multiple)
    assert whole.shape == tiled.shape == img.shape
    diff = (tiled - whole).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1
    # seams: the jump between neighbouring columns is no larger at tile borders than elsewhere
    jumps = (tiled[..., 1:] - tiled[..., :-1]).abs().mean(dim=(0, 1, 2))
    ref = (whole[..., 1:] - whole[..., :-1]).abs().mean(dim=(0, 1, 2))
    assert (jumps - ref).abs().max() < 0.01


# -- describe / export -------------------------------------------------------------------------------
def test_describe_json(capsys):
    from cellbench.cli import main

    assert main(["describe", "ccgan", "--preset", "paper", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"generator", "discriminator"}
    assert info["generator"]["params"] == count_params(create_normalizer("ccgan", "paper").G_xy)
    assert main(["describe", "pcnet", "--preset", "quick"]) == 0
    out = capsys.readouterr().out
    assert "UNetGenerator" in out and "ConvTranspose2d" in out and "feature_network" in out
    assert main(["describe", "affine"]) == 2


def test_onnx_export_matches_pytorch(tmp_path, capsys):
    import numpy as np
    import onnxruntime as ort

    from cellbench.cli import main

    norm = create_normalizer("ccgan", None, gen_widths=[4, 8], disc_widths=[4, 4, 4, 4], head_channels=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for m in norm.G_xy.modules():  # non-trivial batch-norm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    norm.fitted = True
    norm.save(tmp_path / "model")
    assert main(["export", str(tmp_path / "model"), "--onnx", str(tmp_path / "g.onnx"), "--size", "32"]) == 0
    assert "max |onnxruntime - PyTorch|" in capsys.readouterr().out
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(5))  # another size: dynamic axes
    got = sess.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = norm.G_xy.eval()(x).numpy()
    assert np.abs(got - want).max() < 1e-3


def test_head_depth_adds_full_resolution_1x1_layers():
    """Each extra head layer is a 1x1 convolution (c*c weights, no bias) plus batch norm (2c)."""
    from cellbench.nets import UNetGenerator

    def count(g):
        return sum(p.numel() for p in g.parameters())

    c = 24
    base = UNetGenerator([8, 16], head_channels=c)
    deeper = UNetGenerator([8, 16], head_channels=c, head_depth=2)
    assert count(deeper) - count(base) == 2 * (c * c + 2 * c)
    convs = [m for m in deeper.head if isinstance(m, nn.Conv2d)]
    assert [m.kernel_size for m in convs] == [(1, 1)] * 3
    with torch.no_grad():
        out = deeper.eval()(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 3, 16, 16) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="head_channels"):
        UNetGenerator([8, 16], head_depth=1)
