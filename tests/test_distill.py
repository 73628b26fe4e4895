"""Distilled normalizers and 3D LUTs: the fast kernel against the torch oracle, fitting, .cube files, distill()."""

from __future__ import annotations

import pytest
import torch

from cellbench.data.sets import PairedSet, as_unpaired
from cellbench.errors import ConfigError
from cellbench.methods import create_normalizer, load_normalizer
from cellbench.methods.distill import DISTILL_KINDS, distill, lut_of, normalizer_from_cube
from cellbench.nets import lut as L

from .smears import toy_smears


@pytest.fixture(scope="module")
def pairs() -> PairedSet:
    x, masks = toy_smears(8, 48, seed=3, noise=0.02, texture=0.1)
    y = (0.9 * x**1.3 + torch.tensor([0.04, 0.0, 0.02]).view(1, 3, 1, 1)).clamp(0, 1)
    return PairedSet(x=x, y=y, labels=["neutrophil", "lymphocyte"] * 4, masks=masks)


@pytest.mark.parametrize("interp", L.INTERPOLATIONS)
def test_kernel_matches_grid_sample_oracle(interp):
    """The LLVM kernel equals torch's grid_sample (trilinear) / the gather reference (tetrahedral)."""
    if not L.kernel_available():
        pytest.skip("llvmlite kernel unavailable")
    g = torch.Generator().manual_seed(0)
    table = torch.rand(3, 17, 17, 17, generator=g)
    x = torch.rand(5, 3, 23, 29, generator=g) * 1.2 - 0.1  # out-of-range values are clamped; 667 px: a tail
    x[0, :, 0, :3] = torch.tensor([[0.0, 1.0, 0.5]] * 3)  # lattice boundaries
    want = L.apply_lut_reference(x, table, interp)
    for threads in (1, 2, 3):
        got = L.apply_lut(x, table, interp, threads=threads)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    torch.testing.assert_close(L.apply_lut(x[:1], table, interp, threads=2), want[:1], atol=2e-6, rtol=0)


def test_trilinear_reference_is_grid_sample_and_gathers_agree():
    g = torch.Generator().manual_seed(1)
    table = torch.rand(3, 9, 9, 9, generator=g)
    x = torch.rand(2, 3, 8, 8, generator=g)
    idx, w = L.interp_weights(x.permute(0, 2, 3, 1).reshape(-1, 3), 9, "trilinear")
    gathered = (table.reshape(3, -1)[:, idx] * w[None]).sum(-1).reshape(3, 2, 8, 8).permute(1, 0, 2, 3)
    torch.testing.assert_close(gathered, L.apply_lut_reference(x, table, "trilinear"), atol=1e-6, rtol=0)


@pytest.mark.parametrize("interp", L.INTERPOLATIONS)
def test_identity_and_linear_maps_are_exact(interp):
    """A LUT sampled from an affine map reproduces it exactly between nodes (both interpolations are
    linear in each simplex / multilinear in each cell)."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    ident = L.identity_lut(33)
    torch.testing.assert_close(L.apply_lut(x, ident, interp), x, atol=1e-6, rtol=0)
    a = torch.tensor([[0.7, 0.1, 0.0], [0.05, 0.8, 0.1], [0.0, 0.1, 0.75]])
    affine = torch.einsum("ij,jbgr->ibgr", a, ident) + 0.05
    want = torch.einsum("ij,njhw->nihw", a, x) + 0.05
    torch.testing.assert_close(L.apply_lut(x, affine, interp), want, atol=1e-5, rtol=0)


def test_fit_lut_recovers_a_smooth_map():
    """Least squares on random colours of a known smooth map reproduces it to well under 1/255."""
    g = torch.Generator().manual_seed(4)
    xs = torch.rand(60_000, 3, generator=g, dtype=torch.float64)
    ys = 0.9 * xs**1.4 + 0.03
    lut = L.fit_lut(xs.numpy(), ys.numpy(), size=17, interpolation="tetrahedral", smoothness=1e-6)
    probe = torch.rand(1, 3, 32, 32, generator=g)
    err = (L.apply_lut(probe, lut) - (0.9 * probe**1.4 + 0.03)).abs().max()
    assert err < 1 / 255


def test_fit_lut_fills_empty_regions_smoothly():
    """Colours never seen in training get the prior's continuation, not zeros."""
    g = torch.Generator().manual_seed(5)
    xs = torch.rand(20_000, 3, generator=g, dtype=torch.float64) * 0.5  # only the dark octant
    lut = L.fit_lut(xs.numpy(), (xs * 0.8 + 0.1).numpy(), size=9, smoothness=1e-3)
    bright = L.apply_lut(torch.full((1, 3, 4, 4), 0.9), lut)
    assert (bright - (0.9 * 0.8 + 0.1)).abs().max() < 0.05  # the linear map continued


def test_cube_round_trip(tmp_path):
    """Export to .cube and back reproduces the transform to 1/255 (the issue's acceptance test)."""
    table = L.identity_lut(33) ** 1.3 * 0.95
    path = L.write_cube(tmp_path / "x.cube", table, title="test")
    text = path.read_text().splitlines()
    assert "LUT_3D_SIZE 33" in text and len([t for t in text if t[:1].isdigit()]) == 33**3
    # red varies fastest: the second data row is (r = 1/32, g = 0, b = 0)
    rows = [t for t in text if t[:1].isdigit()]
    assert [float(v) for v in rows[1].split()] == pytest.approx([(1 / 32) ** 1.3 * 0.95, 0.0, 0.0], abs=1e-6)
    back, title = L.read_cube(path)
    assert title == "test"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    diff = (L.apply_lut(x, back) - L.apply_lut(x, table)).abs().max()
    assert diff <= 1 / 255 and diff < 1e-5


def test_cube_errors(tmp_path):
    p = tmp_path / "bad.cube"
    p.write_text("LUT_3D_SIZE 2\n0 0 0\n1 1 1\n")
    with pytest.raises(ConfigError, match="needs 8 rows"):
        L.read_cube(p)
    p.write_text("LUT_1D_SIZE 4\n")
    with pytest.raises(ConfigError, match="1D LUT"):
        L.read_cube(p)


def test_output_buffers_are_never_shared():
    """A pooled output is reused only once every reference to it is gone."""
    x = torch.rand(2, 3, 16, 16)
    a = L.apply_lut(x, L.identity_lut(5))
    b = L.apply_lut(x * 0.5, L.identity_lut(5))
    assert a.data_ptr() != b.data_ptr()
    torch.testing.assert_close(a, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", DISTILL_KINDS)
def test_distill_paired_and_unpaired_deterministic(kind, pairs, tmp_path):
    teacher = create_normalizer("poly").fit(pairs, seed=0)
    opts = {"lut3d": {"size": 17}, "pixelnet": {"iterations": 800}, "ctx": {"iterations": 300}}[kind]
    a = distill(teacher, pairs, kind, seed=1, **opts)
    b = distill(teacher, as_unpaired(pairs), kind, seed=1, **opts)  # Y is never read: same student
    assert a.name == kind and a.params["teacher"] == "poly"
    probe = pairs.x[:3]
    torch.testing.assert_close(a.transform(probe), b.transform(probe), atol=0, rtol=0)
    a.save(tmp_path / kind)
    again = load_normalizer(tmp_path / kind)
    assert torch.equal(again.transform(probe), a.transform(probe))
    err = (a.transform(probe) - teacher.transform(probe)).abs().mean()
    # the student follows its teacher (short fits: pixelnet's 800 steps and ctx's 300 are not converged)
    assert err < {"lut3d": 0.01, "pixelnet": 0.03, "ctx": 0.05}[kind]


def test_lut3d_distils_poly_closely(pairs):
    teacher = create_normalizer("poly").fit(pairs, seed=0)
    student = distill(teacher, pairs, "lut3d")
    x = pairs.x
    assert (student.transform(x) - teacher.transform(x)).abs().max() < 2 / 255


def test_adaptive_lut_fits_per_image_variation():
    """Images whose gain differs with their mean brightness: one global LUT cannot follow, the adaptive can."""
    x, masks = toy_smears(12, 32, seed=7, noise=0.01, texture=0.1)
    x = x * torch.linspace(0.7, 1.0, 12).view(12, 1, 1, 1)  # per-image exposure
    y = (x / x.mean(dim=(1, 2, 3), keepdim=True) * 0.6).clamp(0, 1)  # normalised exposure: needs context
    data = PairedSet(x=x, y=y, labels=["a"] * 12, masks=masks)
    plain = create_normalizer("lut3d", size=9).fit(data)
    adaptive = create_normalizer("lut3d", size=9, basis=3, iterations=300, lr=5e-3).fit(data, seed=0)
    e_plain = (plain.transform(x) - y).square().mean()
    e_adapt = (adaptive.transform(x) - y).square().mean()
    assert e_adapt < 0.7 * e_plain


def test_export_refuses_adaptive_and_other_methods(pairs):
    with pytest.raises(ConfigError, match="no 3D LUT"):
        lut_of(create_normalizer("poly").fit(pairs))
    norm = normalizer_from_cube(L.identity_lut(5))
    assert torch.equal(lut_of(norm), L.identity_lut(5))


def test_bad_kind_and_options(pairs):
    teacher = create_normalizer("identity")
    with pytest.raises(ConfigError, match="lut3d, pixelnet, ctx"):
        distill(teacher, pairs, "lut2d")
    with pytest.raises(ConfigError, match="interpolation"):
        create_normalizer("lut3d", interpolation="cubic")
    with pytest.raises(ConfigError, match="unknown option"):
        distill(teacher, pairs, "lut3d", hidden=3)


def test_cli_distill_export_profile(tmp_path, pairs, capsys):
    from cellbench.cli import main

    teacher_dir = tmp_path / "poly"
    create_normalizer("poly").fit(pairs).save(teacher_dir)
    out = tmp_path / "lut"
    assert main(["distill", str(teacher_dir), "--data", "synthetic:n=10,size=32", "--image-size", "32",
                 "--out", str(out), "--size", "9"]) == 0
    assert load_normalizer(out).params["size"] == 9
    assert main(["export", str(out), "--cube", str(tmp_path / "t.cube")]) == 0
    assert "LUT_3D_SIZE 9" in (tmp_path / "t.cube").read_text()
    capsys.readouterr()
    assert main(["profile", str(out), "--batch-sizes", "1,2", "--size", "32", "--repeats", "2", "--json"]) == 0
    import json

    prof = json.loads(capsys.readouterr().out)
    assert prof["method"] == "lut3d" and set(prof["throughput_by_batch"]) == {"1", "2"}
    assert prof["latency_by_batch"]["2"]["rounds"] == 2 and prof["cpu_time_s"] >= 0


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_pixel_mlp_cpu_matches_the_convolutions(threads):
    """The chunked matrix-product path computes the network's own 1x1 convolutions, for any chunking
    and thread split (a last chunk shorter than the others, more threads than images)."""
    from cellbench.methods.distill import PixelNet, pixel_mlp_cpu

    torch.manual_seed(3)
    net = PixelNet(hidden=8, layers=4).eval()
    x = torch.rand(2, 3, 37, 29)
    with torch.no_grad():
        ref = net(x)
        got = pixel_mlp_cpu(net, x, chunk=100, threads=threads, kernel=False)
        whole = pixel_mlp_cpu(net, x[:, :, ::2], chunk=10_000, threads=threads, kernel=False)  # a non-contiguous view
        ref_view = net(x[:, :, ::2].contiguous())
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(whole, ref_view, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("threads", "rows", "local"), [(1, 16, 4), (2, 6, 4), (3, 4, 0)])
def test_ctx_forward_cpu_is_the_network(threads, rows, local):
    """The reordered CPU path (context projected at half resolution, strips of rows) is the same function."""
    from cellbench.methods.distill import CtxNet, ctx_forward_cpu

    torch.manual_seed(5)
    net = CtxNet((6, 5), local=local, head=7).eval()
    for p in net.parameters():  # the untrained head is zero (identity): give it weights
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(3, 3, 20, 28)
    with torch.no_grad():
        ref = net(x)
        got = ctx_forward_cpu(net, x, rows=rows, threads=threads)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        ctx_forward_cpu(net, x[:, :, :18])


@pytest.mark.parametrize(("hidden", "layers", "residual", "shape"), [(16, 3, False, (3, 3, 32, 48)),
                                                                      (8, 4, True, (1, 3, 17, 23))])
def test_pixel_kernel_is_the_network(hidden, layers, residual, shape):
    """The compiled kernel (whole MLP in registers, 16 pixels per step, a torch tail for H*W % 16)
    computes the network's 1x1 convolutions, on 1 or 2 threads, more images than threads or fewer."""
    from cellbench.methods.distill import PixelNet
    from cellbench.nets.pixel_kernel import apply_pixel_mlp, mlp_kernel_available

    if not mlp_kernel_available((3, hidden, 3), residual):
        pytest.skip("no LLVM kernel here (llvmlite missing or disabled)")
    torch.manual_seed(7)
    net = PixelNet(hidden=hidden, layers=layers, residual=residual).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.4)
    x = torch.rand(*shape)
    layers_ = [(c.weight[:, :, 0, 0], c.bias) for c in net.convs]
    with torch.no_grad():
        ref = net(x)
        for threads in (1, 2):
            got = apply_pixel_mlp(x, layers_, residual=residual, threads=threads)
            torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="input planes"):
        apply_pixel_mlp(torch.rand(1, 4, 16, 16), layers_, residual=residual)


def test_ctx_pool_student_cpu_path_and_context():
    """The pooled-context student: its CPU path (features in torch, MLP in the kernel) is its
    forward, and it learns a map no per-pixel function can (the local contrast x - mean + 0.5)."""
    from cellbench.methods.distill import CtxPoolNet, ctx_pool_cpu

    torch.manual_seed(11)
    net = CtxPoolNet(scales=(4, 8), hidden=8).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(5, 3, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(ctx_pool_cpu(net, x, chunk=2), net(x), atol=2e-6, rtol=1e-5)
    # a context-dependent teacher: two copies of a colour, one on a dark field, one on a light one
    xs, _ = toy_smears(12, 64, seed=2, noise=0.02, texture=0.1)
    blur = torch.nn.functional.avg_pool2d(xs, 8)
    y = (xs - torch.nn.functional.interpolate(blur, size=(64, 64), mode="bilinear") + 0.5).clamp(0, 1)
    data = PairedSet(x=xs, y=y, labels=["a"] * 12)
    ctx = create_normalizer("ctx", iterations=400, crop_size=64, lr=1e-2).fit(data, seed=0)
    lut = create_normalizer("lut3d", size=17).fit(data, seed=0)
    e_ctx = (ctx.transform(xs) - y).abs().mean()
    e_lut = (lut.transform(xs) - y).abs().mean()
    assert e_ctx < 0.6 * e_lut
