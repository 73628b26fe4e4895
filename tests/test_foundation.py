"""Registry, normalizer persistence, affine recovery, results schema, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cellbench.cli import main
from cellbench.data.sets import PairedSet
from cellbench.errors import CheckpointError, ConfigError
from cellbench.io import read_image, write_image
from cellbench.methods import NORMALIZERS, create_normalizer, load_normalizer
from cellbench.registry import Registry
from cellbench.results import Record, load_results, run_metadata, save_parquet, save_results

from .test_data import make_paired


def test_registry_did_you_mean():
    r: Registry[int] = Registry("thing")
    r.add("pcnet", 1, "perceptual")
    r.add("ccgan", 2)
    with pytest.raises(ConfigError, match="Did you mean 'pcnet'"):
        r.get("pcnt")
    assert r.names() == ["ccgan", "pcnet"] and r.describe("pcnet") == "perceptual"
    with pytest.raises(ValueError):
        r.add("pcnet", 3)


def _affine_pairs(n=6, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 0.8 + 0.1
    A = torch.tensor([[0.9, 0.05, -0.02], [0.03, 0.8, 0.1], [-0.05, 0.02, 1.05]])
    b = torch.tensor([0.02, -0.01, 0.03])
    y = torch.einsum("ij,njhw->nihw", A, x) + b.view(1, 3, 1, 1)
    return PairedSet(x, y, ["neutrophil"] * n), A, b


def test_affine_recovers_known_map():
    data, A, b = _affine_pairs()
    norm = create_normalizer("affine").fit(data, seed=0)
    assert torch.allclose(norm.matrix[:, :3], A, atol=1e-4)
    assert torch.allclose(norm.matrix[:, 3], b, atol=1e-4)


def test_save_load_round_trip_and_wrong_model(tmp_path):
    data, _, _ = _affine_pairs()
    norm = create_normalizer("affine").fit(data)
    norm.save(tmp_path / "m")
    again = load_normalizer(tmp_path / "m")
    assert torch.equal(again.transform(data.x), norm.transform(data.x))
    with pytest.raises(CheckpointError, match="holds a 'affine' model"):
        NORMALIZERS.get("identity").load(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not a cellbench model folder"):
        load_normalizer(tmp_path)
    (tmp_path / "m" / "normalizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_normalizer(tmp_path / "m")


def test_create_normalizer_rejects_unknown_option():
    with pytest.raises(ConfigError, match="unknown option"):
        create_normalizer("affine", colour="red")
    with pytest.raises(ConfigError, match="Did you mean"):
        create_normalizer("afine")


def test_results_round_trip(tmp_path):
    recs = [Record("r1", "hm", "ciede2000_mean", 3.5, cell_type="eosinophil", n=50, ci_low=3.1, ci_high=3.9,
                   region="wbc", higher_is_better=False),
            Record("r1", "pcnet", "agreement", 88.6, n=981, unit="%", higher_is_better=True, extra={"k": 1}),
            Record("r1", "x", "fid", float("nan"))]
    meta = run_metadata({"profile": "quick"})
    from cellbench.eval.metrics import METRICS

    save_results(tmp_path, recs, meta, metrics=METRICS)
    back, meta2 = load_results(tmp_path)
    assert back[:2] == recs[:2] and np.isnan(back[2].value)
    assert meta2["config"] == {"profile": "quick"} and "commit" in meta2["git"] and meta2["machine"]["cpu_count"]
    import pandas as pd

    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df["metric"]) == ["ciede2000_mean", "agreement", "fid"]
    p = save_parquet(tmp_path / "r.parquet", recs)
    assert pd.read_parquet(p)["value"].iloc[1] == pytest.approx(88.6)


def test_cli_methods_lists_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in NORMALIZERS.names():
        assert name in out


def test_cli_fit_and_transform(tmp_path, capsys):
    root = make_paired(tmp_path / "ds", n=5, size=(32, 32), masks=False)
    assert main(["fit", "affine", "--data", str(root), "--out", str(tmp_path / "model"), "--size", "32"]) == 0
    meta = json.loads((tmp_path / "model" / "normalizer.json").read_text())
    assert meta["method"] == "affine"
    src = tmp_path / "in"
    write_image(src / "a" / "one.png", np.full((32, 32, 3), 10, np.uint8))
    write_image(src / "two.png", np.full((40, 36, 3), 200, np.uint8))
    (src / "bad.png").write_bytes(b"nope")
    code = main(["transform", "--model", str(tmp_path / "model"), str(src), str(tmp_path / "out"), "-q"])
    assert code == 1  # one unreadable input is reported, the rest written
    assert read_image(tmp_path / "out" / "a" / "one.png").shape == (32, 32, 3)
    # Y = 255 - X in make_paired: the fitted map inverts intensities
    assert read_image(tmp_path / "out" / "two.png").mean() == pytest.approx(55, abs=2)
    assert "bad.png" in capsys.readouterr().err
    assert main(["transform", "--model", str(tmp_path / "model"), str(src), str(src / "sub")]) == 2


def test_cli_data_check_exit_status(tmp_path, capsys):
    root = make_paired(tmp_path / "ds", n=3)
    assert main(["data", "check", str(root), "-q"]) == 0
    (root / "X" / "eosinophil" / "c000.png").write_bytes(b"")
    assert main(["data", "check", str(root), "-q"]) == 1
    out = capsys.readouterr().out
    assert "empty" in out and "Traceback" not in out
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
