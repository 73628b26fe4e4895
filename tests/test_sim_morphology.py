"""Measured morphology (cellbench.sim.morphology) and scenes drawn from it (cellbench.sim.scene)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cellbench.data.classes import CLASSES
from cellbench.data.masks import NUCLEUS
from cellbench.errors import ConfigError
from cellbench.io import write_image
from cellbench.sim import load_system, make_scene, render
from cellbench.sim.morphology import (
    DEFAULT_MORPHOLOGY,
    DERIVED_CLASS,
    DERIVED_GLOBAL,
    MORPHOLOGY_VERSION,
    count_lobes,
    load_morphology,
    measure_folder,
    measure_image,
    packaged_derived,
    save_morphology,
)
from cellbench.sim.pairs import ITEMS_PER_SLIDE, slide_for, slide_of
from cellbench.sim.scene import Slide

# -- lobe counting on masks with known lobes ----------------------------------------------------


def _disc(mask, cy, cx, r):
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _strand(mask, p, q, width):
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    v = np.subtract(q, p, dtype=float)
    t = np.clip(((yy - p[0]) * v[0] + (xx - p[1]) * v[1]) / (v @ v), 0, 1)
    mask |= np.hypot(yy - p[0] - t * v[0], xx - p[1] - t * v[1]) <= width / 2


@pytest.mark.parametrize("lobes", [1, 2, 3, 4])
def test_count_lobes_on_masks_with_known_lobes(lobes):
    m = np.zeros((160, 160), bool)
    centres = [(80 + 45 * math.sin(a), 80 + 45 * math.cos(a)) for a in np.linspace(0, 1.4 * math.pi, lobes)]
    for c in centres:
        _disc(m, *c, 15)
    for p, q in zip(centres[:-1], centres[1:], strict=False):
        _strand(m, p, q, 4)
    assert count_lobes(m) == lobes


def test_a_band_nucleus_is_one_lobe():
    m = np.zeros((160, 160), bool)
    for a in np.linspace(0, 1.2 * math.pi, 40):  # a thick C
        _disc(m, 80 + 45 * math.sin(a), 80 + 45 * math.cos(a), 12)
    assert count_lobes(m) == 1
    assert count_lobes(np.zeros((10, 10), bool)) == 0


# -- a cytoplasm the colour segmentation labels red cell (haemoglobinised erythroblasts) ----------


def _field_with_cell(ring_label: int):
    """A 256 px field: nucleus disc r 20 at the centre, a ring out to r 45 labelled ``ring_label``
    (1 red cell: an erythroblast's lilac-grey cytoplasm; 3 cytoplasm), a red cell r 35 touching the
    cell on the right and one free red cell; the image painted from the labels."""
    labels = np.zeros((256, 256), np.uint8)
    yy, xx = np.mgrid[0:256, 0:256]
    r = np.hypot(yy - 128, xx - 128)
    labels[np.hypot(yy - 128, xx - 206) <= 35] = 1  # touching: centres 78 px apart, radii 45 + 35
    labels[np.hypot(yy - 40, xx - 50) <= 34] = 1
    labels[r <= 45] = ring_label
    labels[r <= 20] = 4
    palette = np.array([[235, 225, 205], [205, 150, 155], [0, 0, 0], [175, 165, 205], [70, 40, 115]], np.uint8)
    return palette[labels], labels


def test_a_cytoplasm_labelled_red_cell_is_measured_as_the_round_body_around_the_nucleus():
    image, labels = _field_with_cell(1)
    m = measure_image(image, labels, "erythroblast")
    assert m["found"]
    # the body of radius 45 (area 6,362 px), not the nucleus alone (1,257 px; ratio ~1) and not the
    # touching red cell (+3,848 px)
    assert m["cell_area"] == pytest.approx(math.pi * 45**2, rel=0.06)
    assert m["nc_ratio"] == pytest.approx((20 / 45) ** 2, abs=0.03)
    # the same cell with its cytoplasm labelled as such measures the same
    image3, labels3 = _field_with_cell(3)
    m3 = measure_image(image3, labels3, "erythroblast")
    assert m3["cell_area"] == pytest.approx(m["cell_area"], rel=0.06)


def test_a_nucleus_next_to_a_red_cell_does_not_take_it_in():
    """A cell with its own (cytoplasm-labelled) rim touching a red cell: the rule does not fire, and the
    measured cell stays the white cell."""
    image, labels = _field_with_cell(3)
    m = measure_image(image, labels, "lymphocyte")
    assert m["cell_area"] < math.pi * 45**2 * 1.06


# -- measurement recovers known properties of rendered scenes -----------------------------------


def _const(v: float) -> dict:
    return {"n": 1, "mean": v, "sd": 0.0, **{f"q{p:02d}": v for p in (5, 25, 50, 75, 95)}}


def _morph(cell_area: float, nc: float) -> dict:
    c = {
        "cell_area": _const(cell_area), "nc_ratio": _const(nc), "nuc_solidity": _const(0.97),
        "nuc_eccentricity": _const(0.3), "nuc_offset": _const(0.0), "chrom_fine": _const(0.1),
        "chrom_coarse": _const(0.1), "cyt_granularity": _const(0.2), "rbc_cover": _const(0.4),
        "rbc_diameter": _const(72.0), "rbc_pallor": _const(0.9), "lobe_hist": {"1": 1.0},
        "band_fraction": 0.0,
    }
    return {"version": MORPHOLOGY_VERSION, "classes": {"lymphocyte": c, "monocyte": dict(c)},
            "derived": packaged_derived()}


def test_measurement_recovers_cell_and_nucleus_area_of_rendered_scenes(tmp_path):
    """Scenes rendered with a known cell area and nucleus/cell ratio (no spread) are measured back:
    the cell area within 15 % and the ratio within 0.1 (the segmentation's anti-aliased edges and
    the convex hull make up the tolerance)."""
    system = load_system("dm96-like")
    truth = {"lymphocyte": (9000.0, 0.7), "monocyte": (20000.0, 0.45)}
    slide = Slide(np.ones(5, np.float32))
    for cls, (area, nc) in truth.items():
        morph = _morph(area, nc)
        for i in range(4):
            sc = make_scene(cls, np.random.default_rng(i), 256, slide=slide, morphology=morph)
            img = render(system, sc.parts, sc.depths_um, rng=np.random.default_rng(i))
            write_image(tmp_path / cls / f"{i}.png", img)
    out = measure_folder(tmp_path)
    assert out["version"] == MORPHOLOGY_VERSION and out["source"]["folder"] == tmp_path.name
    assert out["derived"] == load_morphology()["derived"]  # the renderer's corrections travel along
    assert str(tmp_path.parent) not in json.dumps(out)  # no absolute paths of the user's files
    for cls, (area, nc) in truth.items():
        c = out["classes"][cls]
        assert c["n_found"] == 4
        assert c["cell_area"]["mean"] == pytest.approx(area, rel=0.15), (cls, c["cell_area"])
        assert c["nc_ratio"]["mean"] == pytest.approx(nc, abs=0.1), (cls, c["nc_ratio"])
        assert c["lobe_hist"]["1"] == 1.0


# -- files -----------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    m = _morph(9000.0, 0.7)
    p = tmp_path / "m.json"
    save_morphology(m, p)
    assert load_morphology(p) == m


@pytest.mark.parametrize(
    "text, match",
    [
        ("{", "not valid JSON"),
        ('{"version": 99, "classes": {}}', "'version' must be"),
        ('{"version": 1}', "missing key 'classes'"),
        ('{"version": 1, "classes": {"neutrophil": {}}}', "class 'neutrophil': missing or bad key 'cell_area'"),
        ('{"version": 1, "classes": {"dragon": {}}}', "unknown class 'dragon'"),
        ("V2_NO_DERIVED", "missing key 'derived'"),
        ("V2_BAD_GLOBAL", "'derived.global.nuc_area_gain' missing or not a finite number"),
        ("V2_NO_HOW", "'derived.how.pallor_gain' missing"),
        ("V2_BAD_CLASS", "'derived.classes.basophil.gran_size'"),
    ],
)
def test_bad_morphology_file_names_file_and_key(tmp_path, text, match):
    p = tmp_path / "bad.json"
    if text.startswith("V2_"):  # a good measured file whose 'derived' section is broken
        m = _morph(9000.0, 0.7)
        d = m["derived"]
        if text == "V2_NO_DERIVED":
            del m["derived"]
        elif text == "V2_BAD_GLOBAL":
            d["global"]["nuc_area_gain"] = "big"
        elif text == "V2_NO_HOW":
            del d["how"]["pallor_gain"]
        else:
            d["classes"]["basophil"]["gran_size"] = 2.0
        text = json.dumps(m)
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_morphology(p)
    assert str(p) in str(e.value)


def test_missing_morphology_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_morphology(tmp_path / "none.json")


def test_packaged_morphology_has_all_classes():
    m = load_morphology()
    assert DEFAULT_MORPHOLOGY.name == f"morphology-pbc-v{MORPHOLOGY_VERSION}.json"
    assert m["version"] == MORPHOLOGY_VERSION == 2
    assert set(m["classes"]) == set(CLASSES)
    assert m["source"]["folder"] == "pbc_dm96"
    for cls, c in m["classes"].items():
        if cls == "platelet":
            assert c["plt_area"]["mean"] > 0
            continue
        # measured facts about blood cells the simulator relies on
        assert 0.1 < c["nc_ratio"]["mean"] < 0.95, cls
        assert 40 < c["rbc_diameter"]["mean"] < 110, cls  # ~7.5 um red cells at ~0.1 um/px
    lym, mono = m["classes"]["lymphocyte"], m["classes"]["monocyte"]
    assert lym["cell_area"]["mean"] < mono["cell_area"]["mean"]  # monocytes are the largest
    assert lym["nc_ratio"]["mean"] > m["classes"]["neutrophil"]["nc_ratio"]["mean"]
    # segmented classes show separate lobes more often than mononuclear ones
    assert m["classes"]["neutrophil"]["lobe_hist"]["1"] < lym["lobe_hist"]["1"]


# -- lab variation: slides -------------------------------------------------------------------------


def test_items_share_their_slide_and_pairs_keep_one_stain():
    assert slide_of(0) == slide_of(ITEMS_PER_SLIDE - 1) != slide_of(ITEMS_PER_SLIDE)
    a, b = slide_for(0, 3), slide_for(0, 5)
    np.testing.assert_array_equal(a.stain, b.stain)
    c = slide_for(0, ITEMS_PER_SLIDE + 1)
    assert not np.array_equal(a.stain, c.stain)
    assert not np.array_equal(slide_for(1, 3).stain, a.stain)  # another data set seed, other slides


def test_slide_ph_shifts_the_azure_eosin_balance():
    """Over many slides the azure (blue) and eosin (red) multipliers are anti-correlated through
    the buffer pH and positively through the staining time; both spread by a few per cent."""
    s = np.array([Slide.draw(np.random.default_rng(i)).stain for i in range(400)])
    log = np.log(s)
    assert 0.05 < log[:, 0].std() < 0.2 and 0.05 < log[:, 1].std() < 0.2
    np.testing.assert_allclose(log[:, 1], log[:, 2])  # methylene blue and azure B: one azure stain
    th = np.array([Slide.draw(np.random.default_rng(i)).thickness for i in range(400)])
    assert th.min() < 0.85 < 1.15 < th.max()  # thin edge and thick body fields


@pytest.mark.parametrize("cls", ["lymphocyte", "neutrophil", "monocyte"])
def test_scenes_draw_cell_area_and_lobes_from_the_packaged_measurements(cls):
    """The white cell of a scene (mask labels 3-5) has the measured mean area to within 20 % over
    24 scenes (the measured between-image sd is 20-30 % of the mean), with spread."""
    from cellbench.data.masks import WBC_LABELS

    m = load_morphology()["classes"][cls]
    areas = []
    for i in range(24):
        sc = make_scene(cls, np.random.default_rng(100 + i), 256)
        areas.append(np.isin(sc.mask, WBC_LABELS).sum())
    assert np.mean(areas) == pytest.approx(m["cell_area"]["mean"], rel=0.2)
    assert np.std(areas) > 0.05 * np.mean(areas)  # intra-class variation, as measured


# -- the scene generator's rendering corrections are data (version 2) -----------------------------


def test_packaged_corrections_are_complete_with_provenance():
    d = load_morphology()["derived"]
    assert set(d["global"]) == set(DERIVED_GLOBAL)
    for cls, entry in d["classes"].items():
        assert cls in CLASSES and set(entry) <= set(DERIVED_CLASS)
    for name in set(DERIVED_GLOBAL) | {k for e in d["classes"].values() for k in e}:
        assert len(d["how"][name]) > 40, name  # says where the value comes from
    # the granule classes have their granule size and cover in the file, not in code
    for cls in ("neutrophil", "eosinophil", "basophil", "monocyte", "ig"):
        assert {"gran_r", "gran_cover"} <= set(d["classes"][cls]), cls


def test_version_1_file_reads_with_the_packaged_corrections(tmp_path):
    m = _morph(9000.0, 0.7)
    del m["derived"]
    m["version"] = 1
    p = tmp_path / "v1.json"
    p.write_text(json.dumps(m))
    assert load_morphology(p)["derived"] == packaged_derived()


def test_scene_reads_its_corrections_from_the_file():
    """Doubling ``nuc_area_gain`` in the file (capped at 0.92 of the cell) grows the drawn nucleus of
    a lymphocyte with a measured ratio of 0.4 by well over a third; the same seed otherwise."""
    base = _morph(9000.0, 0.4)
    big = json.loads(json.dumps(base))
    big["derived"]["global"]["nuc_area_gain"] *= 2

    def nuc_px(m):
        return sum(int((make_scene("lymphocyte", np.random.default_rng(i), 256, morphology=m).mask == NUCLEUS).sum())
                   for i in range(4))

    assert nuc_px(big) > 1.35 * nuc_px(base)


def test_ambiguity_rates_are_twice_the_real_error_share():
    """From a confusion matrix: each row's off-diagonal share doubled; confusers by their counts;
    platelets (no nucleus to blend) and error-free rows get no borderline cells."""
    from cellbench.sim.morphology import ambiguity_from_confusion

    classes = ["ig", "neutrophil", "monocyte", "platelet"]
    cm = [[40, 6, 4, 0], [1, 49, 0, 0], [0, 0, 50, 0], [0, 3, 0, 47]]
    amb = ambiguity_from_confusion(cm, classes, source="unit test")
    assert amb["rates"] == {"ig": 0.4, "neutrophil": 0.04}
    assert amb["confusers"] == {"ig": {"neutrophil": 0.6, "monocyte": 0.4}, "neutrophil": {"ig": 1.0}}
    assert "unit test" in amb["how"] and "ambiguous_fraction" not in amb
    # only half the real errors attributed to ambiguity (the packaged file's choice): every rate halves
    half = ambiguity_from_confusion(cm, classes, ambiguous_fraction=0.5)
    assert half["rates"] == {"ig": 0.2, "neutrophil": 0.02} and half["confusers"] == amb["confusers"]
    assert half["ambiguous_fraction"] == 0.5 and "0.5" in half["how"]
    with pytest.raises(ValueError, match="shape"):
        ambiguity_from_confusion([[1, 0], [0, 1]], classes)
    for f in (0.0, 1.5):
        with pytest.raises(ValueError, match="ambiguous_fraction"):
            ambiguity_from_confusion(cm, classes, ambiguous_fraction=f)


def test_borderline_cells_lie_between_their_class_and_the_confuser():
    """Rate 1 (every ig cell borderline, towards lymphocytes): each drawn cell's measured statistics
    and stains lie between ig's and lymphocyte's, on the same fraction t; granules thin out with t
    (lymphocytes have none). Rate 0 draws exactly the plain scenes, and a class without a rate is
    untouched (its random stream is not consumed)."""
    from cellbench.sim.scene import _CLASS, _borderline

    base = load_morphology()
    plain = json.loads(json.dumps(base))
    plain["ambiguity"] = {"rates": {"ig": 0.0}, "confusers": {}, "how": "test"}
    border = json.loads(json.dumps(base))
    border["ambiguity"] = {"rates": {"ig": 1.0}, "confusers": {"ig": {"lymphocyte": 1.0}}, "how": "test"}
    a_nc, b_nc = (base["classes"][k]["nc_ratio"]["q50"] for k in ("ig", "lymphocyte"))
    ts = []
    for i in range(8):
        m, p, c, look, label = _borderline(border, "ig", np.random.default_rng(i))
        assert label == "ig"  # no label_width: borderline cells keep their class
        t = (m["nc_ratio"]["q50"] - a_nc) / (b_nc - a_nc)
        assert 0.0 <= t <= 1.0
        np.testing.assert_allclose(p["nuc"], (1 - t) * _CLASS["ig"]["nuc"] + t * _CLASS["lymphocyte"]["nuc"], rtol=1e-5)
        assert look == ("ig" if t < 0.5 else "lymphocyte")
        ig_cover = packaged_derived()["classes"]["ig"]["gran_cover"]
        assert c["gran_cover"] == pytest.approx(ig_cover * (1 - t))
        # lymphocytes have their own (smooth) cytoplasm texture, ig the global one: interpolated
        g_tex = base["derived"]["global"]["cyt_tex_coarse"]
        l_tex = base["derived"]["classes"]["lymphocyte"]["cyt_tex_coarse"]
        assert c["cyt_tex_coarse"] == pytest.approx((1 - t) * g_tex + t * l_tex)
        ts.append(t)
    assert min(ts) < 0.4 and max(ts) > 0.6  # t is drawn, not fixed
    # t_range [lo, hi]: t uniform on it (one point: every cell at that t; what sim_borderline.py draws)
    for lo, hi in ((0.3, 0.3), (0.6, 0.8)):
        ranged = json.loads(json.dumps(border))
        ranged["ambiguity"]["t_range"] = [lo, hi]
        for i in range(8):
            m = _borderline(ranged, "ig", np.random.default_rng(i))[0]
            t = (m["nc_ratio"]["q50"] - a_nc) / (b_nc - a_nc)
            assert lo - 1e-9 <= t <= hi + 1e-9
            assert t == pytest.approx(lo + (hi - lo) * (ts[i] - 0.0), abs=1e-9)  # the same draw, rescaled

    no_amb = json.loads(json.dumps(base))
    no_amb.pop("ambiguity", None)
    a = make_scene("ig", np.random.default_rng(3), 128, morphology=no_amb)
    b = make_scene("ig", np.random.default_rng(3), 128, morphology=plain)
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.layers, b.layers)
    e1 = make_scene("eosinophil", np.random.default_rng(4), 128, morphology=no_amb)
    e2 = make_scene("eosinophil", np.random.default_rng(4), 128, morphology=border)
    assert np.array_equal(e1.mask, e2.mask) and np.array_equal(e1.layers, e2.layers)
    assert not np.array_equal(make_scene("ig", np.random.default_rng(3), 128, morphology=border).mask, a.mask)


@pytest.mark.parametrize(("section", "match"), [
    ({"rates": {"ig": 1.5}, "confusers": {"ig": {"neutrophil": 1}}, "how": "x"}, "probability"),
    ({"rates": {"ig": 0.1}, "confusers": {}, "how": "x"}, "confusers.ig"),
    ({"rates": {"ig": 0.1}, "confusers": {"ig": {"ig": 1}}, "how": "x"}, "another white-cell class"),
    ({"rates": {"ig": 0.1}, "confusers": {"ig": {"neutrophil": 1}}}, "how"),
    ({"rates": {"ig": 0.1}, "confusers": {"ig": {"neutrophil": 1}}, "how": "x", "ambiguous_fraction": 0}, "fraction"),
    ({"rates": {"ig": 0.1}, "confusers": {"ig": {"neutrophil": 1}}, "how": "x", "t_range": [0.8, 0.2]}, "t_range"),
])
def test_bad_ambiguity_section_names_the_key(tmp_path, section, match):
    params = load_morphology()
    params["ambiguity"] = section
    path = tmp_path / "m.json"
    path.write_text(json.dumps(params))
    with pytest.raises(ConfigError, match=match):
        load_morphology(path)


def test_cytoplasm_composition_varies_per_cell_along_the_measured_factors(tmp_path):
    """``cyt_factor_sd`` (amount, eosinophilia): on one slide, the eosin / methylene-blue ratio of a
    lymphocyte's cytoplasm is the same in every cell without it and spreads by about twice the
    eosinophilia sigma with it (its direction moves eosin +1 and the blue dyes -1 in log amount);
    a class without the key draws exactly the scenes it drew before (its random stream is not
    consumed); a bad value names the key."""
    from cellbench.data.masks import CYTOPLASM
    from cellbench.sim.morphology import CYT_FACTOR_NAMES
    from cellbench.sim.scene import CYT_FACTORS
    from cellbench.sim.spectra import EOSIN, METHYLENE_BLUE

    assert CYT_FACTORS.shape == (len(CYT_FACTOR_NAMES), 5)
    base = load_morphology()
    off, on = json.loads(json.dumps(base)), json.loads(json.dumps(base))
    off["derived"]["classes"]["lymphocyte"].pop("cyt_factor_sd", None)
    on["derived"]["classes"]["lymphocyte"]["cyt_factor_sd"] = [0.0, 0.3]
    on["derived"]["how"]["cyt_factor_sd"] = "unit test: an eosinophilia spread only"
    slide = Slide.draw(np.random.default_rng(0))

    def log_ratios(m):
        out = []
        for i in range(12):
            s = make_scene("lymphocyte", np.random.default_rng(i), 256, slide=slide, morphology=m)
            layer0 = s.layers[0]
            sel = s.mask == CYTOPLASM
            out.append(math.log(layer0[EOSIN][sel].sum() / layer0[METHYLENE_BLUE][sel].sum()))
        return np.array(out)

    assert log_ratios(off).std() < 0.02
    assert 0.35 < log_ratios(on).std() < 0.9  # 2 x 0.3, diluted by the plasma under the thin rim
    a = make_scene("basophil", np.random.default_rng(5), 128, morphology=off)
    b = make_scene("basophil", np.random.default_rng(5), 128, morphology=on)
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.layers, b.layers)

    on["derived"]["classes"]["lymphocyte"]["cyt_factor_sd"] = [0.1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(on))
    with pytest.raises(ConfigError, match="cyt_factor_sd' must be 2 sigmas"):
        load_morphology(bad)


def test_a_class_cytoplasm_texture_overrides_the_global_one():
    """``derived.classes.<class>.cyt_tex_coarse`` replaces the global coarse (3.5 px) cytoplasm texture
    amplitude for that class only. Against the same scene (same geometry) drawn with amplitude 0, the
    relative change of the cytoplasm's stain amount scales with the amplitude: 0.1 gives a quarter of
    the change 0.4 gives."""
    from cellbench.data.masks import CYTOPLASM
    from cellbench.sim.spectra import EOSIN

    base = load_morphology()

    def with_coarse(cls_value, global_value=0.4):
        m = json.loads(json.dumps(base))
        m["derived"]["global"]["cyt_tex_coarse"] = global_value
        m["derived"]["classes"]["neutrophil"]["cyt_tex_coarse"] = cls_value
        s = make_scene("neutrophil", np.random.default_rng(2), 256, morphology=m)
        return s.mask, s.layers[0][EOSIN]

    mask, flat = with_coarse(0.0)
    inner = mask == CYTOPLASM
    changes = []
    for cls_value, global_value in ((0.1, 0.4), (0.4, 0.1)):  # the class's value wins either way
        m, layer = with_coarse(cls_value, global_value)
        assert np.array_equal(m, mask)
        changes.append((layer[inner] / flat[inner] - 1).std())
    assert 0.2 < changes[0] / changes[1] < 0.3
    e1 = make_scene("eosinophil", np.random.default_rng(3), 128, morphology=base)
    m = json.loads(json.dumps(base))
    m["derived"]["classes"]["neutrophil"]["cyt_tex_coarse"] = 0.0
    e2 = make_scene("eosinophil", np.random.default_rng(3), 128, morphology=m)
    assert np.array_equal(e1.layers, e2.layers)  # other classes keep the global value


def test_soft_labelled_borderline_cells_take_the_nearer_class_near_their_border(tmp_path):
    """``ambiguity.label_width``: a borderline cell is labelled by the nearer class with a soft border
    (the confuser with probability 1 / (1 + exp(-(t - 1/2) / w))); w = 0 is the nearer class exactly.
    The rate that matches a real error share divides it by the border's error share, which is
    2 w ln(2 / (1 + exp(-1 / 2w))) (checked by quadrature); the label reaches the simulated pair."""
    from cellbench.sim.morphology import ambiguity_from_confusion, soft_label_error
    from cellbench.sim.pairs import simulate_pair
    from cellbench.sim.scene import _borderline

    t = (np.arange(200000) + 0.5) / 200000
    p = 1 / (1 + np.exp(-(t - 0.5) / 0.1))
    assert soft_label_error(0.1) == pytest.approx(np.minimum(p, 1 - p).mean(), rel=1e-4)
    assert soft_label_error(0.0) == 0.0
    classes = ["ig", "neutrophil"]
    amb = ambiguity_from_confusion([[48, 2], [0, 50]], classes, label_width=0.1)
    assert amb["rates"] == {"ig": round(0.04 / soft_label_error(0.1), 4)} and amb["label_width"] == 0.1

    base = load_morphology()
    hard = json.loads(json.dumps(base))
    hard["ambiguity"] = {"rates": {"ig": 1.0}, "confusers": {"ig": {"lymphocyte": 1.0}}, "how": "test",
                         "label_width": 0.0}
    a_nc, b_nc = (base["classes"][k]["nc_ratio"]["q50"] for k in ("ig", "lymphocyte"))
    for i in range(12):
        m, _, _, look, label = _borderline(hard, "ig", np.random.default_rng(i))
        t = (m["nc_ratio"]["q50"] - a_nc) / (b_nc - a_nc)
        assert label == look == ("ig" if t < 0.5 else "lymphocyte")
    soft = json.loads(json.dumps(hard))
    soft["ambiguity"]["label_width"] = 0.1
    flips = []
    for i in range(300):
        m, _, _, look, label = _borderline(soft, "ig", np.random.default_rng(i))
        flips.append(label != look)
    assert 0.07 < np.mean(flips) < 0.21  # soft_label_error(0.1) = 0.137 of them against the nearer class
    soft["ambiguity"]["label_width"] = 2.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(soft))
    with pytest.raises(ConfigError, match="label_width"):
        load_morphology(bad)
    from cellbench.sim import scene as scene_module

    cached = scene_module._default_morphology()
    saved = cached.get("ambiguity")
    cached["ambiguity"] = hard["ambiguity"]
    try:
        labels = [simulate_pair(3 + 8 * k, size=64, seed=0).label for k in range(6)]  # index 3: ig
    finally:
        if saved is None:
            cached.pop("ambiguity")
        else:
            cached["ambiguity"] = saved
    assert set(labels) <= {"ig", "lymphocyte"} and "lymphocyte" in labels


# -- the measured Gaussian copula: features drawn jointly -------------------------------------------


def test_copula_recovers_a_known_rank_correlation_whatever_the_marginals():
    """Normal scores of cells drawn from a Gaussian copula with correlation 0.6 between cell area and
    nucleus/cell ratio and -0.4 between area and chromatin (other features independent) give back that
    matrix within 0.05 on 8,000 cells (sampling sd about 0.011), through monotone non-normal marginals (exp,
    square, logistic)."""
    from cellbench.sim.morphology import COPULA_FEATURES, copula

    k = len(COPULA_FEATURES)
    truth = np.eye(k)
    ia, ir, ic = (COPULA_FEATURES.index(f) for f in ("cell_area", "nc_ratio", "chrom_fine"))
    truth[ia, ir] = truth[ir, ia] = 0.6
    truth[ia, ic] = truth[ic, ia] = -0.4
    z = np.random.default_rng(0).multivariate_normal(np.zeros(k), truth, size=8000)
    x = z.copy()
    x[:, ia] = 9000 * np.exp(0.3 * z[:, ia])
    x[:, ir] = (z[:, ir] + 3) ** 2
    x[:, ic] = 1 / (1 + np.exp(-z[:, ic]))
    rows = [dict(zip(COPULA_FEATURES, r, strict=True)) for r in x]
    rows[5]["nc_ratio"] = math.nan  # a cell missing a feature is left out
    cop = copula(rows)
    assert cop["features"] == list(COPULA_FEATURES) and cop["n"] == 7999
    assert np.abs(np.array(cop["corr"]) - truth).max() < 0.05
    assert copula(rows[:15]) is None  # too few cells to measure a correlation


def _with_copula(base: dict, cls: str, r: float) -> dict:
    from cellbench.sim.morphology import COPULA_FEATURES

    m = json.loads(json.dumps(base))
    k = len(COPULA_FEATURES)
    c = np.eye(k)
    ia, ir = COPULA_FEATURES.index("cell_area"), COPULA_FEATURES.index("nc_ratio")
    c[ia, ir] = c[ir, ia] = r
    m["classes"][cls]["copula"] = {"features": list(COPULA_FEATURES), "corr": c.tolist(), "n": 100}
    return m


def test_scenes_draw_their_features_jointly_through_the_class_copula():
    """With a copula correlation of +0.9 between cell area and nucleus/cell ratio, the drawn cells' white-cell
    area and nucleus share (from the scene masks) correlate positively; with -0.9, negatively (Spearman over
    30 lymphocytes; independent draws give about 0). Other classes draw exactly the scenes they drew."""
    from scipy.stats import spearmanr

    from cellbench.data.masks import WBC_LABELS

    base = load_morphology()
    base.pop("ambiguity", None)  # ordinary cells only: a borderline one takes its nearer class's copula
    rho = {}
    for r in (0.9, -0.9):
        m = _with_copula(base, "lymphocyte", r)
        area, share = [], []
        for i in range(30):
            sc = make_scene("lymphocyte", np.random.default_rng(500 + i), 256, morphology=m)
            wbc = np.isin(sc.mask, WBC_LABELS).sum()
            area.append(wbc)
            share.append((sc.mask == NUCLEUS).sum() / wbc)
        rho[r] = spearmanr(area, share).statistic
    assert rho[0.9] > 0.4 and rho[-0.9] < -0.4
    m = _with_copula(base, "lymphocyte", 0.9)
    for cls in ("monocyte", "platelet"):
        a = make_scene(cls, np.random.default_rng(7), 128, morphology=base)
        b = make_scene(cls, np.random.default_rng(7), 128, morphology=m)
        assert np.array_equal(a.layers, b.layers) and np.array_equal(a.mask, b.mask)


@pytest.mark.parametrize(
    "corr, match",
    [
        ("ASYM", "symmetric with a unit diagonal"),
        ("NOT_PD", "not positive definite"),
        ("SHAPE", "must be a 2x2 matrix"),
        ("NAME", "must be distinct names"),
    ],
)
def test_bad_copula_names_the_class_and_key(tmp_path, corr, match):
    m = _morph(9000.0, 0.7)
    cop = {"features": ["cell_area", "nc_ratio"], "corr": [[1.0, 0.5], [0.5, 1.0]], "n": 50}
    if corr == "ASYM":
        cop["corr"] = [[1.0, 0.5], [0.4, 1.0]]
    elif corr == "NOT_PD":
        cop["corr"] = [[1.0, 1.5], [1.5, 1.0]]
    elif corr == "SHAPE":
        cop["corr"] = [[1.0]]
    else:
        cop["features"] = ["cell_area", "wings"]
    m["classes"]["monocyte"]["copula"] = cop
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(m))
    with pytest.raises(ConfigError, match=match) as e:
        load_morphology(p)
    assert str(p) in str(e.value) and "classes.monocyte.copula" in str(e.value)


def test_sim_borderline_draws_cells_at_the_given_t(benchmark_script):
    """``benchmarks/sim_borderline.py``'s renderer: ``n`` dm96-like images of class a drawn at exactly ``t`` towards b
    (reproducible; t = 0 and t = 1 give different cells from the same random streams), the morphology untouched."""
    mod = benchmark_script("sim_borderline")
    morph = load_morphology()
    before = json.dumps(morph, sort_keys=True)
    at0 = mod.borderline_images(morph, "ig", "lymphocyte", 0.0, 2, size=64)
    at1 = mod.borderline_images(morph, "ig", "lymphocyte", 1.0, 2, size=64)
    assert len(at0) == 2 and at0[0].shape == (64, 64, 3) and at0[0].dtype == np.uint8
    again = mod.borderline_images(morph, "ig", "lymphocyte", 0.0, 2, size=64)
    assert all(np.array_equal(a, b) for a, b in zip(at0, again, strict=True))
    assert not np.array_equal(at0[0], at1[0])
    assert json.dumps(morph, sort_keys=True) == before
