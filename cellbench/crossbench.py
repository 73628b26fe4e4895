"""The cross-system (unpaired) track: ``cellbench run-all --data cross:x=DIR,y=DIR``.

The question users bring: *my classifier was trained on system Y; can I normalize system X
images instead of retraining?* Two labelled single-system folders with no pairs:

1. ``cross-data``   both folders split 80/10/10 (seeded, stratified); classes present in only one
                    system are reported and excluded from the accuracy; optional scale
                    normalization of X to Y's cell size (``--scale wbc|rbc``)
2. ``classifier``   the WBC classifier trained on Y train (early stopping on Y val)
3. ``fit-<m>``      every method able to learn without pairs, fitted on the X and Y train splits
                    (ccGAN as a CycleGAN, pcNet with the Gram style loss, HM by per-region moment
                    matching, the classical ones as they are)
4. ``eval-<m>``     the headline: the Y classifier's accuracy on transformed X test images against
                    the raw X images (``identity``), per class, with confusion matrices; realism
                    (C2ST, FID, KID) and colour statistics against the Y test images
5. ``speed-<m>``    as in the paired track
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .bench import MIN_REALISM_IMAGES, Benchmark, Stage, _load_records, _u8, _write_json
from .data.sets import LabelledSet, UnpairedSet
from .errors import ConfigError
from .eval.agreement import wilson_interval
from .methods import NORMALIZERS
from .results import Record, run_metadata, save_results

log = logging.getLogger(__name__)


def _save_labelled(path: Path, data: LabelledSet) -> None:
    save_file({"images": _u8(data.images).contiguous()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"labels": data.labels, "ids": data.ids}))


def _load_labelled(path: Path) -> LabelledSet:
    meta = json.loads(path.with_suffix(".json").read_text())
    return LabelledSet(load_file(str(path))["images"].float().div_(255.0), meta["labels"], meta["ids"])


def unpaired_colour_records(run: str, method: str, outputs: torch.Tensor, out_labels: list[str],
                            target: torch.Tensor, target_labels: list[str], *, seed: int = 0,
                            samples: int = 20000) -> list[Record]:
    """Colour statistics of G(x) against Y when nothing is paired.

    Each side is segmented on its own (:class:`cellbench.segmentation.ColourSegmenter`, fitted on
    that side's images); per cell type present on both sides (and ``"all"``) and per region,
    pixels are pooled, and we report the CIEDE2000 between the mean CIELAB colours
    (``colour_delta_e``) and the Wasserstein-1 distance of each channel (``w1_L``, ``w1_a``,
    ``w1_b``, on a seeded subsample of ``samples`` pixels per side).
    """
    from scipy.stats import wasserstein_distance

    from .eval.colour import REGIONS
    from .eval.image import ciede2000, rgb_to_lab
    from .segmentation import ColourSegmenter

    rng = np.random.default_rng(seed)
    sides = []
    for imgs, labels in ((outputs, out_labels), (target, target_labels)):
        masks = ColourSegmenter().fit(imgs, seed=seed).predict(imgs).numpy()
        lab = rgb_to_lab(imgs.float()).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
        sides.append((lab, masks, np.asarray(labels)))
    records: list[Record] = []
    types = ["all"] + sorted(set(out_labels) & set(target_labels))
    for ct in types:
        for region, values in REGIONS.items():
            px = []
            for lab, masks, labels in sides:
                sel = np.ones(len(labels), bool) if ct == "all" else labels == ct
                m = np.isin(masks[sel], values)
                px.append(lab[sel][m])
            if min(len(px[0]), len(px[1])) < 50:
                continue
            means = [p.mean(axis=0) for p in px]
            de = float(ciede2000(torch.tensor(means[0]).view(1, 3), torch.tensor(means[1]).view(1, 3), dim=1)[0])
            n_img = int(sum(1 for lb in out_labels if ct in ("all", lb)))
            kw = dict(cell_type=ct, region=region, n=n_img)
            records.append(Record(run, method, "colour_delta_e", de, higher_is_better=False,
                                  extra={"pixels": int(len(px[0])), "target_pixels": int(len(px[1])),
                                         "unpaired": True}, **kw))
            sub = [p[rng.choice(len(p), size=min(samples, len(p)), replace=False)] for p in px]
            for i, ch in enumerate("Lab"):
                records.append(Record(run, method, f"lab_{ch}_mean", float(means[0][i]),
                                      extra={"target": float(means[1][i])}, **kw))
                records.append(Record(run, method, f"w1_{ch}", float(wasserstein_distance(sub[0][:, i], sub[1][:, i])),
                                      higher_is_better=False, **kw))
    return records


class CrossBenchmark(Benchmark):
    """Benchmark on two unpaired labelled folders (see the module docstring)."""

    def __init__(self, run_dir, *, profile: str = "quick", data: str, methods: list[str] | None = None,
                 device: str = "cpu", seed: int = 0, overrides: dict[str, Any] | None = None,
                 progress: bool = True, x_test: str | None = None, scale: str | None = "none") -> None:
        from .data.spec import parse_data_spec

        spec = parse_data_spec(data)
        if spec.kind != "cross":
            raise ConfigError(f"--data {data}: the cross-system track needs cross:x=DIR,y=DIR")
        all_unpaired = [m for m in NORMALIZERS.names() if "unpaired" in NORMALIZERS.get(m).data_kinds]
        chosen = list(methods) if methods else all_unpaired
        for m in chosen:
            if "unpaired" not in NORMALIZERS.get(m).data_kinds:
                raise ConfigError(f"method {m!r} needs registered pairs; unpaired methods: {', '.join(all_unpaired)}")
        if "identity" not in chosen:
            chosen = ["identity", *chosen]  # the raw-X baseline the gain is measured against
        super().__init__(run_dir, profile=profile, data="synthetic", methods=chosen, device=device, seed=seed,
                         overrides=overrides, progress=progress)
        self.spec = spec
        self.x_test_dir = x_test
        self.scale = None if scale in (None, "none") else scale
        self._cross: dict[str, Any] | None = None
        self._y_feats: np.ndarray | None = None

    # .. data ....................................................................................
    def data_config(self) -> dict[str, Any]:
        return {"spec": str(self.spec), "x_test": self.x_test_dir, "scale": self.scale, "size": self.cfg["size"],
                "seed": self.seed, "limit_per_class": (self.cfg.get("cross_limit_per_class") or None),
                "version": __version__}

    def classifier_config(self) -> dict[str, Any]:
        from .eval.classifier import classifier_config

        # the classifier sees only Y: X, its test folder and its scaling do not invalidate it
        return {"y": self.spec.options["y"], "size": self.cfg["size"], "seed": self.seed,
                "limit_per_class": (self.cfg.get("cross_limit_per_class") or None),
                "preset": self.cfg["classifier_preset"], "version": __version__,
                "settings": classifier_config(self.cfg["classifier_preset"])}

    def cross(self) -> dict[str, Any]:
        if self._cross is not None:
            return self._cross
        from .data.cross import load_cross

        st = Stage(self.run_dir, "cross-data", self.data_config())
        if not st.done:
            cd = load_cross(self.spec.options["x"], self.spec.options["y"], size=int(self.cfg["size"]), seed=self.seed,
                            x_test_dir=self.x_test_dir, scale=self.scale,
                            limit_per_class=(self.cfg.get("cross_limit_per_class") or None))
            for name, s in (("x_train", cd.train.x), ("y_train", cd.train.y), ("x_val", cd.val.x), ("y_val", cd.val.y),
                            ("x_test", cd.x_test), ("y_test", cd.y_test)):
                _save_labelled(st.dir / f"{name}.safetensors", s)
            _write_json(st.dir / "classes.json", {"shared": cd.shared_classes, "x_only": cd.x_only,
                                                  "y_only": cd.y_only, "tiny": cd.tiny_classes,
                                                  "scale_factor": cd.scale_factor})
            st.finish()
        sets = {n: _load_labelled(st.dir / f"{n}.safetensors")
                for n in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        info = json.loads((st.dir / "classes.json").read_text())
        self._cross = {**sets, **info}
        return self._cross

    # .. classifier on Y ...........................................................................
    def classifier(self):
        from .eval.classifier import load_classifier, train_classifier

        if self._clf is not None:
            return self._clf
        st = self.classifier_stage()
        if not st.done:
            c = self.cross()
            clf = train_classifier(c["y_train"], c["y_val"], preset=self.cfg["classifier_preset"], seed=self.seed,
                                   work_dir=st.dir / "work", progress=self.progress)
            clf.save(st.dir / "model")
            st.finish()
        self._clf = load_classifier(st.dir / "model", device=self.device)
        return self._clf

    def train_data(self) -> UnpairedSet:
        c = self.cross()
        return UnpairedSet(c["x_train"], c["y_train"])

    def y_test_features(self) -> np.ndarray:
        """The classifier's features of the Y test images (computed once per run)."""
        if self._y_feats is None:
            self._y_feats = self.classifier().features(self.cross()["y_test"].images).float().cpu().numpy()
        return self._y_feats

    # .. evaluation ..................................................................................
    def evaluate(self, name: str) -> list[Record]:
        from .eval.evaluate import realism_records

        st = self.eval_stage(name)
        if st.done:
            return _load_records(st.dir / "records.json")
        c = self.cross()
        clf = self.classifier()
        x_test = c["x_test"]
        outputs = self.transform_all(self.fitted(name), x_test.images)
        pred = clf.predict(outputs).cpu().numpy()
        classes = list(clf.classes)
        shared = set(c["shared"])
        keep = np.array([lab in shared for lab in x_test.labels])
        truth = np.array([classes.index(lab) if lab in classes else -1 for lab in x_test.labels])
        correct = (pred == truth) & keep
        records: list[Record] = []
        k, n = int(correct.sum()), int(keep.sum())
        lo, hi = wilson_interval(k, n) if n else (float("nan"), float("nan"))
        excluded = sorted({lab for lab in x_test.labels if lab not in shared})
        records.append(Record(self.run_name, name, "accuracy", 100.0 * k / max(n, 1), n=n, ci_low=100 * lo,
                              ci_high=100 * hi, unit="%", higher_is_better=True,
                              extra={"on": "transformed X test", "excluded_classes": excluded}))
        for cls in sorted(shared):
            sel = np.array([lab == cls for lab in x_test.labels])
            kc, nc = int(correct[sel].sum()), int(sel.sum())
            lo, hi = wilson_interval(kc, nc) if nc else (float("nan"), float("nan"))
            records.append(Record(self.run_name, name, "accuracy", 100.0 * kc / max(nc, 1), cell_type=cls, n=nc,
                                  ci_low=100 * lo, ci_high=100 * hi, unit="%", higher_is_better=True))
        if self.cfg["realism"] and min(len(outputs), len(c["y_test"])) >= MIN_REALISM_IMAGES:
            n = min(len(outputs), len(c["y_test"]))
            records += realism_records(self.run_name, name, real=c["y_test"].images[:n], fake=outputs[:n],
                                       real_features=self.y_test_features(),
                                       fake_features=clf.features(outputs).float().cpu().numpy(), seed=self.seed)
        records += unpaired_colour_records(self.run_name, name, outputs, x_test.labels, c["y_test"].images,
                                           c["y_test"].labels, seed=self.seed)
        return self.finish_eval(st, name, records, outputs, pred, correct=correct)

    def run(self, *, report: bool = True, comparison: bool = False) -> Path:
        from .eval.evaluate import mcnemar_records

        t0 = time.perf_counter()
        c = self.cross()
        clf = self.classifier()
        from .eval.classifier import evaluate_classifier

        ev = evaluate_classifier(clf, c["y_test"])
        records: list[Record] = [Record(self.run_name, "classifier", "accuracy", 100.0 * ev["accuracy"], n=ev["n"],
                                        unit="%", higher_is_better=True, extra={"on": "Y test"})]
        for m in self.methods:
            records += self.evaluate(m)
        base = next(r.value for r in self.evaluate("identity") if r.metric == "accuracy" and r.cell_type == "all")
        for m in self.methods:
            acc = next(r for r in self.evaluate(m) if r.metric == "accuracy" and r.cell_type == "all")
            records.append(Record(self.run_name, m, "accuracy_gain", acc.value - base, n=acc.n, unit="pp",
                                  higher_is_better=True, extra={"baseline": "identity (raw X)"}))
        correct = {m: np.load(self.eval_stage(m).dir / "correct.npy") for m in self.methods}
        records += mcnemar_records(self.run_name, correct)
        for m in self.methods:
            records += self.speed(m)
        # artifacts: confusion matrices, image grid (X, methods, a Y image of the same class), curves
        art = self.reset_artifacts()
        xl = c["x_test"].labels
        self.write_confusions(art, self.methods, ev, xl, "Y classifier on {m}(X test)")
        from .io import write_image

        rows = []
        outs = {m: load_file(str(self.eval_stage(m).dir / "outputs.safetensors"))["outputs"] for m in self.methods}
        y_test = c["y_test"]
        for cls in sorted(c["shared"]):
            i = next(i for i, lab in enumerate(xl) if lab == cls)
            j = next(j for j, lab in enumerate(y_test.labels) if lab == cls)
            images = {}
            cols = [("X", _u8(c["x_test"].images[i]))] + [(m, outs[m][i]) for m in self.methods]
            cols.append(("Y (another cell)", _u8(y_test.images[j])))
            for col, img in cols:
                safe = "".join(ch if ch.isalnum() else "_" for ch in f"{cls}_{col}")
                write_image(art / "samples" / f"{safe}.png", img.permute(1, 2, 0).numpy())
                images[col] = f"samples/{safe}.png"
            rows.append({"cell_type": cls, "id": c["x_test"].ids[i], "images": images, "diffs": {}})
        _write_json(art / "samples" / "manifest.json",
                    {"columns": ["X", *self.methods, "Y (another cell)"], "rows": rows})
        self.copy_curves(art, self.methods)
        config = {**self.cfg, "data": str(self.spec), "x_test": self.x_test_dir, "scale": self.scale,
                  "scale_factor": c.get("scale_factor"), "methods": self.methods, "device": self.device,
                  "seed": self.seed, "shared_classes": c["shared"], "x_only_classes": c["x_only"],
                  "y_only_classes": c["y_only"], "tiny_classes": c["tiny"], "track": "cross"}
        meta = run_metadata(config)
        meta["seconds"] = time.perf_counter() - t0
        save_results(self.run_dir, records, meta)
        (self.run_dir / "config.json").write_text(json.dumps(config, indent=1, default=str))
        if not report:
            return self.run_dir / "results.json"
        from .report import build_report

        return build_report(self.run_dir, title="cellbench cross-system benchmark")


__all__ = ["CrossBenchmark"]
