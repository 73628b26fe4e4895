"""Tests of the two-system spectral simulator (cellbench.sim)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cellbench.data import PairedFolder
from cellbench.data.classes import CLASSES
from cellbench.data.masks import BACKGROUND, NUCLEUS, RED_CELL, WBC_LABELS
from cellbench.errors import ConfigError
from cellbench.sim import (
    SimulatedPairs,
    builtin_systems,
    load_system,
    make_scene,
    render,
    simulate_pair,
    simulate_pairs,
    write_paired_dataset,
)
from cellbench.sim.spectra import ABSORBERS, HAEMOGLOBIN, absorption_matrix, peak_wavelength


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- spectra -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, lo, hi",
    [
        ("eosin", 515, 528),  # Conn's Biological Stains: 515-518 free, ~525 bound
        ("methylene_blue", 660, 668),  # Bergmann & O'Konski 1963: 664 nm
        ("azure_b", 644, 652),  # Marshall 1978: ~648 nm
        ("azure_eosin", 545, 556),  # Wittekind 1983: ~550 nm
    ],
)
def test_absorber_peaks_match_the_literature(name, lo, hi):
    assert lo <= peak_wavelength(name) <= hi


def test_haemoglobin_soret_and_q_bands():
    wl = np.arange(380.0, 781.0, 1.0)
    eps = absorption_matrix(wl)[HAEMOGLOBIN]
    assert abs(wl[np.argmax(eps)] - 415) <= 2  # Soret (Prahl 1999)
    q = (wl > 500) & (wl < 600)
    # two local maxima near 542 and 577 nm
    interior = np.nonzero(q[1:-1] & (eps[1:-1] > eps[:-2]) & (eps[1:-1] > eps[2:]))[0] + 1
    assert sorted(round(float(wl[i])) for i in interior) == pytest.approx([542, 577], abs=3)
    assert 6 < eps.max() / eps[q].max() < 14  # Soret ~10x the Q bands


# -- systems -------------------------------------------------------------------------------------


def test_builtins_present():
    assert {"dm1200-like", "dm96-like"} <= set(builtin_systems())


@pytest.mark.parametrize("name", ["dm1200-like", "dm96-like"])
def test_absorber_free_pixel_renders_as_background(name):
    s = load_system(name)
    layers = np.zeros((1, 5, 8, 8), np.float32)
    img = render(s, layers, (0.0,), quantize=False)
    np.testing.assert_allclose(img.reshape(-1, 3), np.broadcast_to(s.background_rgb, (64, 3)), atol=2e-3)


def test_haemoglobin_red_cell_differs_between_led_and_halogen_as_predicted():
    """A haemoglobin-only pixel, white-balanced, on both systems. The spectra predict the direction:
    the LED system's red channel (Nikon D5100, response-weighted mean ~593 nm, lit by a phosphor LED
    with little deep red) sits closer to the 577 nm Q band than the halogen system's (mean ~608 nm,
    illuminant A rising into the red), so haemoglobin darkens red more under the LED; the prediction
    is computed independently as the response-weighted transmission of each channel."""
    led, hal = load_system("dm1200-like"), load_system("dm96-like")
    c = np.zeros((5, 1), np.float32)
    c[HAEMOGLOBIN] = 0.3
    t = {s.name: s.raw(c)[:, 0] / s.raw_background for s in (led, hal)}
    eps = absorption_matrix()[HAEMOGLOBIN]
    for s in (led, hal):
        r = s.response.astype(np.float64)
        pred = (r * 10 ** (-0.3 * eps)[:, None]).sum(0) / r.sum(0)
        np.testing.assert_allclose(t[s.name], pred, rtol=1e-4)
    assert led.channel_wavelengths[0] < hal.channel_wavelengths[0]
    assert t["dm1200-like"][0] < t["dm96-like"][0] - 0.01
    # and the rendered 8-bit images differ visibly
    layers = np.zeros((1, 5, 4, 4), np.float32)
    layers[0, HAEMOGLOBIN] = 0.3
    a, b = (render(s, layers, (0.0,), optics=False) for s in (led, hal))
    assert np.abs(a.astype(int) - b.astype(int)).max() > 5


def _write_toml(tmp_path: Path, text: str) -> Path:
    base = (Path(__file__).resolve().parents[1] / "cellbench/sim/systems/dm96-like.toml").read_text()
    p = tmp_path / "bad.toml"
    p.write_text(text(base) if callable(text) else text)
    return p


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda b: b.replace("na = 1.25", "na = 2.5"), "objective.na"),
        (lambda b: b.replace('name = "A"', 'name = "Z9"'), "illuminant.name"),
        (lambda b: b.replace("gamma = 2.2", 'gamma = "x"'), "isp.gamma"),
        (lambda b: b.replace("[camera]", "[camera]\nfoo = 1"), "camera.foo"),
        (
            lambda b: b.replace("peaks_nm = [605.0, 535.0, 460.0]", "peaks_nm = [605.0, 535.0]"),
            "camera.peaks_nm",
        ),
        (lambda b: b.replace("[objective]", "[objectiv]"), "objective"),
        (lambda b: b + '\n[[filters]]\nkind = "wrong"\n', "filters[1].kind"),
    ],
)
def test_bad_system_file_names_file_and_field(tmp_path, edit, field):
    p = _write_toml(tmp_path, edit)
    with pytest.raises(ConfigError) as e:
        load_system(p)
    assert str(p) in str(e.value) and f"'{field}'" in str(e.value)


def test_bad_toml_syntax_and_unknown_name(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_system(p)
    with pytest.raises(ConfigError, match="dm96-like"):
        load_system("dm97-like")


# -- scenes and pairs ----------------------------------------------------------------------------


def test_pair_is_a_function_of_seed_and_index():
    a = simulate_pair(5, size=96, seed=3)
    b = simulate_pair(5, size=96, seed=3)
    c = simulate_pair(5, size=96, seed=4)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.y, c.y)
    chunked = simulate_pairs(2, size=96, seed=3, start=4)
    assert torch.equal(chunked.y[1], torch.from_numpy(a.y).permute(2, 0, 1).float() / 255)


def test_class_balance_and_cycling_order():
    data = simulate_pairs(16, size=64, seed=0)
    assert data.labels == list(CLASSES) * 2
    assert Counter(data.labels) == {c: 2 for c in CLASSES}
    assert data.x.shape == (16, 3, 64, 64) and data.x.dtype == torch.float32
    assert data.masks.dtype == torch.uint8 and data.masks.shape == (16, 64, 64)
    assert 0 <= float(data.x.min()) and float(data.x.max()) <= 1


@pytest.mark.parametrize("cls", CLASSES)
def test_masks_consistent_with_images(cls):
    """Nucleus (or platelet) pixels are darker than background; red cells in between; the mask
    labels the centred cell."""
    rng = np.random.default_rng(0)
    sc = make_scene(cls, rng, 256)
    img = render(load_system("dm96-like"), sc.layers, sc.depths_um).astype(np.float64).sum(-1)
    m = sc.mask
    bg = img[m == BACKGROUND].mean()
    assert img[m == RED_CELL].mean() < bg - 30
    if cls == "platelet":
        assert (m == 2).sum() > 100 and not np.isin(m, WBC_LABELS).any()
        assert img[m == 2].mean() < img[m == RED_CELL].mean()
    else:
        assert m[128, 128] in WBC_LABELS
        assert img[m == NUCLEUS].mean() < img[m == RED_CELL].mean() - 60
    # scene amounts are non-negative and the white cell is stained
    assert (sc.layers >= 0).all() and sc.layers.shape == (3, len(ABSORBERS), 256, 256)


def test_second_rendering_differs_only_by_noise_and_registration():
    d = simulate_pairs(8, size=96, seed=1, second_y=True)
    diff_y2 = (d.y2 - d.y).abs().mean()
    diff_x = (d.x - d.y).abs().mean()
    assert 0 < diff_y2 < 0.03 and diff_x > 2 * diff_y2


def test_streaming_dataset_matches_in_memory():
    ds = SimulatedPairs(4, size=64, seed=2)
    items = list(ds)
    ref = simulate_pairs(4, size=64, seed=2)
    assert [it["label"] for it in items] == ref.labels
    assert all(torch.equal(it["x"], ref.x[i]) for i, it in enumerate(items))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert sorted(it["id"] for it in loader) == sorted(ref.ids)


def test_write_is_worker_independent_and_loadable(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_paired_dataset(a, 24, size=64, seed=7, workers=1, progress=False)
    write_paired_dataset(b, 24, size=64, seed=7, workers=2, progress=False)
    da = _digest(a)
    assert da == _digest(b)
    assert sum(1 for k in da if k.startswith("X/")) == 24
    data = PairedFolder(a).load("test", size=64)
    assert len(data) == 8 and data.masks is not None  # one test item per class
    assert set(data.labels) == set(CLASSES)


def test_cli_simulate(tmp_path):
    from cellbench.cli import main

    rc = main(
        ["simulate", "--n", "8", "--size", "64", "--seed", "1", "--out", str(tmp_path / "o"), "--no-progress"]
    )
    assert rc == 0 and len(list((tmp_path / "o" / "Y").rglob("*.png"))) == 8
    assert (
        main(["simulate", "--n", "8", "--out", str(tmp_path / "p"), "--x-system", str(tmp_path / "no.toml")])
        == 2
    )
