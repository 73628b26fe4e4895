"""``run-all`` and ``compare``: the benchmark as cached stages.

Stages (each cached under ``RUN_DIR/stages/<stage>-<hash>/`` by a hash of its config; a ``DONE``
file marks a finished stage, so a second run reuses finished work and an interrupted run resumes
where it stopped; trained methods also resume inside their stage from their last checkpoint):

1. ``data``        the train/val/test pairs (simulated in memory, or read from a folder), stored as uint8
2. ``classifier``  the WBC classifier trained on Y train (early stopping on Y val)
3. ``fit-<m>``     each normalizer fitted (or trained) on the train split
4. ``eval-<m>``    test outputs, paired metrics, colour statistics, agreement, realism
5. ``speed-<m>``   latency / throughput / memory profile
6. results         ``results.json`` + ``results.csv``, artifacts (confusion matrices, image grid,
                   training curves) and ``report.html``

The layout of the run folder is documented in ``docs/run-folder.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .data.load import synthetic_split
from .data.sets import LabelledSet, PairedSet, UnpairedSet
from .data.spec import DataSpec, parse_data_spec
from .errors import ConfigError
from .methods import NORMALIZERS, Normalizer, create_normalizer, load_normalizer
from .presets import load_preset, models_dir, preset_names
from .results import Record, load_results, run_metadata, save_results

log = logging.getLogger(__name__)

#: Bump when an evaluation stage's output format or metric definitions change (invalidates caches).
EVAL_VERSION = 1
DEFAULT_RUN_DIR = Path("reports")
#: The classifier two-sample test trains on half the test images and tests on the other half.
MIN_REALISM_IMAGES = 8


# -- configuration ----------------------------------------------------------------------------------------
def load_profile(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``[name]`` table of ``models/run-all.toml`` with ``overrides`` applied."""
    path = models_dir() / "run-all.toml"
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read run profiles ({exc})") from None
    if name not in table:
        raise ConfigError(f"{path}: no profile {name!r}; available: {', '.join(sorted(table))}")
    cfg = dict(table[name])
    for key, value in (overrides or {}).items():
        if key not in cfg:
            raise ConfigError(f"unknown run option {key!r}; known: {', '.join(sorted(cfg))}")
        cfg[key] = value
    cfg["profile"] = name
    return cfg


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclass
class Stage:
    """A cached unit of work: ``RUN_DIR/stages/<name>-<hash>/`` with ``DONE`` once finished."""

    run_dir: Path
    name: str
    config: dict[str, Any]

    @property
    def key(self) -> str:
        return config_hash({"name": self.name, **self.config})

    @property
    def dir(self) -> Path:
        d = self.run_dir / "stages" / f"{self.name}-{self.key}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def done(self) -> bool:
        return (self.dir / "DONE").exists()

    def finish(self) -> None:
        (self.dir / "stage.json").write_text(json.dumps({"name": self.name, "config": self.config}, indent=1,
                                                        default=str))
        (self.dir / "DONE").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))


def _save_records(path: Path, records: list[Record]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([r.to_dict() for r in records], default=str))
    os.replace(tmp, path)


def _load_records(path: Path) -> list[Record]:
    return [Record.from_dict(d) for d in json.loads(path.read_text())]


def _u8(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(0, 1).mul(255).round().to(torch.uint8)


def save_paired(path: Path, data: PairedSet) -> None:
    """Store a PairedSet compactly (uint8 tensors + labels/ids JSON)."""
    tensors = {"x": _u8(data.x), "y": _u8(data.y)}
    if data.masks is not None:
        tensors["masks"] = data.masks.to(torch.uint8).contiguous()
    if data.y2 is not None:
        tensors["y2"] = _u8(data.y2)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)
    path.with_suffix(".json").write_text(json.dumps({"labels": data.labels, "ids": data.ids}))


def load_paired(path: Path) -> PairedSet:
    t = load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    f = lambda k: t[k].float().div_(255.0) if k in t else None  # noqa: E731
    return PairedSet(f("x"), f("y"), meta["labels"], meta["ids"], t.get("masks"), f("y2"))


# -- the benchmark ----------------------------------------------------------------------------------------
class Benchmark:
    """One benchmark run in ``run_dir`` (see the module docstring for the stages)."""

    def __init__(self, run_dir: str | os.PathLike, *, profile: str = "quick", data: str = "synthetic",
                 methods: list[str] | None = None, device: str = "cpu", seed: int = 0,
                 overrides: dict[str, Any] | None = None, progress: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = load_profile(profile, overrides)
        self.spec: DataSpec = parse_data_spec(data)
        if self.spec.kind == "cross":
            raise ConfigError("the cross-system track (cross:x=DIR,y=DIR) is run by `run-all --data cross:...` "
                              "through cellbench.crossbench")
        self.methods = list(methods) if methods else NORMALIZERS.names()
        for m in self.methods:
            NORMALIZERS.get(m)
        self.device = device
        self.seed = seed
        self.progress = progress
        self.run_name = self.run_dir.name or "run"
        self._data: dict[str, PairedSet] = {}
        self._clf = None
        self.run_dir.mkdir(parents=True, exist_ok=True)

    # .. stage 1: data ..........................................................................
    def data_config(self) -> dict[str, Any]:
        cfg = {"spec": str(self.spec), "size": self.cfg["size"], "seed": self.seed,
               "synthetic_n": self.cfg["synthetic_n"] if self.spec.kind == "synthetic" else None,
               "version": __version__}
        if self.spec.kind == "resim":
            cfg["resim_limit"] = self.cfg.get("resim_limit_per_class")
        return cfg

    def data(self, split: str) -> PairedSet:
        if split in self._data:
            return self._data[split]
        st = Stage(self.run_dir, "data", self.data_config())
        if not st.done:
            log.info("stage data: preparing %s", self.spec)
            for s in ("train", "val", "test"):
                save_paired(st.dir / f"{s}.safetensors", self._make_split(s))
            st.finish()
        self._data[split] = load_paired(st.dir / f"{split}.safetensors")
        return self._data[split]

    def _make_split(self, split: str) -> PairedSet:
        size = int(self.cfg["size"])
        if self.spec.kind == "synthetic":
            spec = DataSpec("synthetic", None, {"n": str(self.cfg["synthetic_n"]), **self.spec.options})
            return synthetic_split(spec, split, size=size, second_y=(split == "test"))
        if self.spec.kind == "paired":
            from .data.folders import PairedFolder

            return PairedFolder(self.spec.path, seed=self.seed).load(split, size=size)
        if self.spec.kind == "resim":
            root = self._resim_root()
            from .data.folders import PairedFolder

            return PairedFolder(root, seed=self.seed).load(split, size=size)
        raise ConfigError(f"--data {self.spec}: a normalization benchmark needs X and Y images "
                          "(paired:ROOT, resim:DIR, synthetic or cross:x=DIR,y=DIR)")

    def _resim_root(self) -> Path:
        from .sim import resimulate_folder

        limit = int(self.cfg.get("resim_limit_per_class") or 0) or None
        st = Stage(self.run_dir, "resim", {"real": str(self.spec.path), "size": self.cfg["size"],
                                            "seed": self.seed, "limit": limit, "version": __version__})
        root = st.dir / "pairs"
        if not st.done:
            resimulate_folder(self.spec.path, root, size=int(self.cfg["size"]), seed=self.seed,
                              limit_per_class=limit, progress=self.progress)
            st.finish()
        return root

    # .. stage 2: classifier ....................................................................
    def classifier_config(self) -> dict[str, Any]:
        from .eval.classifier import classifier_config

        # the preset's values, not only its name: editing models/classifier.toml retrains
        return {"data": self.data_config(), "preset": self.cfg["classifier_preset"], "seed": self.seed,
                "settings": classifier_config(self.cfg["classifier_preset"])}

    def classifier_stage(self) -> Stage:
        return Stage(self.run_dir, "classifier", self.classifier_config())

    def classifier(self):
        from .eval.classifier import load_classifier, train_classifier

        if self._clf is not None:
            return self._clf
        st = self.classifier_stage()
        if not st.done:
            train, val = self.data("train"), self.data("val")
            log.info("stage classifier: training on %d Y images", len(train))
            clf = train_classifier(LabelledSet(train.y, train.labels, train.ids),
                                   LabelledSet(val.y, val.labels, val.ids),
                                   preset=self.cfg["classifier_preset"], seed=self.seed, work_dir=st.dir / "work",
                                   progress=self.progress)
            clf.save(st.dir / "model")
            st.finish()
        self._clf = load_classifier(st.dir / "model", device=self.device)
        return self._clf

    # .. stage 3: fit ...........................................................................
    def method_params(self, name: str) -> tuple[str | None, dict[str, Any]]:
        preset = self.cfg["method_preset"] if self.cfg["method_preset"] in preset_names(name) else None
        params: dict[str, Any] = {}
        cls = NORMALIZERS.get(name)
        if getattr(cls, "uses_feature_net", False):
            from .errors import MissingWeightsError
            from .nets.features import resolve_vgg16_weights

            try:
                resolve_vgg16_weights()
                params["feature_net"] = "vgg16"
            except MissingWeightsError:
                params["feature_net"] = "classifier"
                params["classifier_dir"] = str(self.classifier_stage().dir / "model")
        if getattr(cls, "trainable", False):
            params["device"] = self.device
        return preset, params

    def feature_nets(self, methods: list[str]) -> dict[str, str]:
        """Which feature network each perceptual method used (the report shows it)."""
        nets = {m: self.method_params(m)[1].get("feature_net") for m in methods}
        return {m: net for m, net in nets.items() if net}

    def fit_stage(self, name: str) -> Stage:
        preset, params = self.method_params(name)
        # the preset's values, not only its name: editing models/<method>.toml refits
        cfg = {"data": self.data_config(), "method": name, "preset": preset, "params": params, "seed": self.seed,
               "preset_values": load_preset(name, preset)}
        if params.get("feature_net") == "classifier":
            cfg["classifier"] = self.classifier_config()
        return Stage(self.run_dir, f"fit-{name}", cfg)

    def train_data(self) -> PairedSet | UnpairedSet:
        """What every method is fitted on (the cross track overrides it with unpaired data)."""
        return self.data("train")

    def fitted(self, name: str) -> Normalizer:
        st = self.fit_stage(name)
        if not st.done:
            preset, params = self.method_params(name)
            if params.get("feature_net") == "classifier":
                self.classifier()
            data = self.train_data()
            n = len(data) if isinstance(data, PairedSet) else len(data.x) + len(data.y)
            if getattr(NORMALIZERS.get(name), "trainable", False) and not self.progress:
                params = {**params, "progress": False}  # --quiet; not part of the stage's hash
            norm = create_normalizer(name, preset, **params)
            norm.bind_run_dir(st.dir / "work", resume=True)
            log.info("stage fit-%s: fitting on %d training images", name, n)
            t0 = time.perf_counter()
            norm.fit(data, seed=self.seed)
            seconds = time.perf_counter() - t0
            norm.save(st.dir / "model")
            (st.dir / "fit.json").write_text(json.dumps({"seconds": seconds, "preset": preset, "n": n}))
            st.finish()
        return load_normalizer(st.dir / "model").to(self.device)

    def fit_records(self, name: str) -> list[Record]:
        """``fit_seconds`` of a fitted method (none for references such as the ceiling)."""
        path = self.fit_stage(name).dir / "fit.json" if name in NORMALIZERS else None
        if path is None or not path.exists():
            return []
        fit = json.loads(path.read_text())
        return [Record(self.run_name, name, "fit_seconds", fit["seconds"], split="train", n=int(fit.get("n", 0)),
                       unit="s", higher_is_better=None)]

    def finish_eval(self, st: Stage, name: str, records: list[Record], outputs: torch.Tensor,
                    pred: np.ndarray, **arrays: np.ndarray) -> list[Record]:
        """Store an evaluation stage: outputs (uint8), predictions, extra arrays, records; then DONE."""
        records = records + self.fit_records(name)
        save_file({"outputs": _u8(outputs).contiguous()}, str(st.dir / "outputs.safetensors"))
        np.save(st.dir / "pred.npy", pred)
        for key, value in arrays.items():
            np.save(st.dir / f"{key}.npy", value)
        _save_records(st.dir / "records.json", records)
        st.finish()
        return records

    # .. stage 4: evaluation ....................................................................
    def transform_all(self, norm: Normalizer, x: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                outs.append(norm.transform(x[i:i + batch_size].to(self.device)).float().cpu())
        return torch.cat(outs)

    def reference_predictions(self) -> dict[str, np.ndarray]:
        """Classifier predictions on the test Y (and Y2) images, cached in the classifier stage."""
        st = self.classifier_stage()
        path = st.dir / f"test-preds-{config_hash(self.data_config())}.json"
        if path.exists():
            return {k: np.asarray(v) for k, v in json.loads(path.read_text()).items()}
        clf, test = self.classifier(), self.data("test")
        preds = {"y": clf.predict(test.y).cpu().numpy()}
        if test.y2 is not None:
            preds["y2"] = clf.predict(test.y2).cpu().numpy()
        path.write_text(json.dumps({k: v.tolist() for k, v in preds.items()}))
        return preds

    def eval_stage(self, name: str) -> Stage:
        return Stage(self.run_dir, f"eval-{name}", {"fit": self.fit_stage(name).key if name != "ceiling" else None,
                                                   "classifier": self.classifier_stage().key,
                                                   "data": self.data_config(), "realism": self.cfg["realism"],
                                                   "eval_version": EVAL_VERSION})

    def test_masks(self) -> torch.Tensor | None:
        """Region masks of the test Y images: the dataset's, else the project's segmentation (cached)."""
        from .eval.evaluate import region_masks

        test = self.data("test")
        if test.masks is not None:
            return test.masks
        path = Stage(self.run_dir, "data", self.data_config()).dir / "test-masks.safetensors"
        if path.exists():
            return load_file(str(path))["masks"]
        masks = region_masks(test, seed=self.seed)
        if masks is not None:
            save_file({"masks": masks.to(torch.uint8).contiguous()}, str(path))
        return masks

    def y_features(self) -> torch.Tensor:
        path = self.classifier_stage().dir / f"test-features-{config_hash(self.data_config())}.safetensors"
        if path.exists():
            return load_file(str(path))["features"]
        feats = self.classifier().features(self.data("test").y).float().cpu().contiguous()
        save_file({"features": feats}, str(path))
        return feats

    def evaluate(self, name: str) -> list[Record]:
        from .eval.evaluate import evaluate_paired, realism_records

        st = self.eval_stage(name)
        if st.done:
            return _load_records(st.dir / "records.json")
        test = self.data("test")
        clf = self.classifier()
        ref = self.reference_predictions()
        if name == "ceiling":
            if test.y2 is None:
                return []
            outputs, pred = test.y2, ref["y2"]
        else:
            norm = self.fitted(name)
            log.info("stage eval-%s: transforming %d test images", name, len(test))
            outputs = self.transform_all(norm, test.x)
            pred = clf.predict(outputs).cpu().numpy()
        records = evaluate_paired(name, outputs, test, run=self.run_name, classifier=clf, y_pred=ref["y"],
                                  g_pred=pred, masks=self.test_masks(), seed=self.seed)
        if self.cfg["realism"] and name != "ceiling" and len(test) < MIN_REALISM_IMAGES:
            log.warning("realism metrics skipped: %d test images (at least %d needed)", len(test), MIN_REALISM_IMAGES)
        elif self.cfg["realism"] and name != "ceiling":
            records += realism_records(self.run_name, name, real=test.y, fake=outputs,
                                       real_features=self.y_features().numpy(),
                                       fake_features=clf.features(outputs).float().cpu().numpy(), seed=self.seed)
        return self.finish_eval(st, name, records, outputs, pred)

    def outputs(self, name: str) -> torch.Tensor:
        st = self.eval_stage(name)
        self.evaluate(name)
        return load_file(str(st.dir / "outputs.safetensors"))["outputs"]

    def predictions(self, name: str) -> np.ndarray:
        self.evaluate(name)
        return np.load(self.eval_stage(name).dir / "pred.npy")

    # .. stage 5: speed .........................................................................
    def speed(self, name: str) -> list[Record]:
        from .eval.evaluate import speed_records
        from .eval.profiling import profile_normalizer

        st = Stage(self.run_dir, f"speed-{name}", {"fit": self.fit_stage(name).key, "device": self.device,
                                                   "batch_sizes": self.cfg["profile_batch_sizes"],
                                                   "repeats": self.cfg["profile_repeats"],
                                                   "size": self.cfg["size"], "eval_version": EVAL_VERSION})
        if st.done:
            return _load_records(st.dir / "records.json")
        norm = self.fitted(name)
        prof = profile_normalizer(norm, size=int(self.cfg["size"]), device=self.device,
                                  batch_sizes=tuple(self.cfg["profile_batch_sizes"]),
                                  repeats=int(self.cfg["profile_repeats"]),
                                  max_seconds=float(self.cfg["profile_seconds"]))
        records = speed_records(self.run_name, name, prof, split="speed")
        _save_records(st.dir / "records.json", records)
        st.finish()
        return records

    # .. classifier's own figures ...............................................................
    def classifier_records(self) -> tuple[list[Record], dict[str, Any]]:
        """The classifier's own accuracy on real Y test images, and its full evaluation (confusion)."""
        from .eval.classifier import evaluate_classifier
        from .eval.evaluate import classifier_records

        test = self.data("test")
        clf = self.classifier()
        ev = evaluate_classifier(clf, LabelledSet(test.y, test.labels, test.ids))
        return classifier_records(self.run_name, self.reference_predictions()["y"], test.labels, clf.classes), ev

    # .. the whole run ..........................................................................
    def run(self, *, report: bool = True, comparison: bool = False) -> Path:
        from .eval.evaluate import mcnemar_records

        t0 = time.perf_counter()
        methods = list(self.methods)
        steps = ["data", "classifier"] + [f"fit/eval {m}" for m in methods] + ["speed", "report"]
        bar = _bar(len(steps), self.progress)
        self.data("train")
        bar.update()
        clf_records, clf_eval = self.classifier_records()
        bar.update()
        records: list[Record] = list(clf_records)
        for m in methods:
            bar.set_postfix_str(m)
            records += self.evaluate(m)
            bar.update()
        records += self.evaluate("ceiling")
        ref = self.reference_predictions()["y"]
        agree = {m: self.predictions(m) == ref for m in methods}
        records += mcnemar_records(self.run_name, agree)
        for m in methods:
            bar.set_postfix_str(f"speed {m}")
            records += self.speed(m)
        bar.update()
        self.write_artifacts(methods, clf_eval)
        config = {**self.cfg, "data": str(self.spec), "methods": methods, "device": self.device, "seed": self.seed,
                  "feature_net": self.feature_nets(methods)}
        if comparison and (self.run_dir / "results.json").exists():
            old, _ = load_results(self.run_dir)
            compared = set(methods)
            keep = [r for r in old
                    if (r.metric == "mcnemar_p" and not {r.method, r.extra.get("vs")} <= compared)
                    or (r.metric != "mcnemar_p" and r.method not in compared | {"classifier", "ceiling"})]
            records = keep + records
        meta = run_metadata(config)
        meta["seconds"] = time.perf_counter() - t0
        save_results(self.run_dir, records, meta)
        (self.run_dir / "config.json").write_text(json.dumps(config, indent=1, default=str))
        out = self.run_dir / "results.json"
        if report:
            from .report import build_comparison_report, build_report

            out = (build_comparison_report(self.run_dir, methods) if comparison else build_report(self.run_dir))
        bar.update()
        bar.close()
        return out

    # .. artifacts for the report ...............................................................
    def write_artifacts(self, methods: list[str], clf_eval: dict[str, Any]) -> None:
        from .io import write_image

        art = self.reset_artifacts()
        test = self.data("test")
        self.write_confusions(art, methods, clf_eval, test.labels, "classifier on {m}(X) (test)")
        # image grid: one (or more) cell of each type: X, every method, Y, and CIEDE2000 maps
        from .eval.image import ciede2000, rgb_to_lab

        rows = []
        per_class = int(self.cfg["samples_per_class"])
        chosen: list[int] = []
        for c in sorted(set(test.labels)):
            chosen += [i for i, lab in enumerate(test.labels) if lab == c][:per_class]
        outs = {m: self.outputs(m) for m in methods}
        y_lab = rgb_to_lab(test.y[chosen])
        for j, i in enumerate(chosen):
            ident = f"{test.labels[i]}-{test.ids[i]}"
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in ident)
            images, diffs = {}, {}
            for col, img in [("X", _u8(test.x[i]))] + [(m, outs[m][i]) for m in methods] + [("Y", _u8(test.y[i]))]:
                rel = f"samples/{safe}_{col}.png"
                write_image(art / rel, img.permute(1, 2, 0).numpy())
                images[col] = rel
                if col != "Y":
                    de = ciede2000(rgb_to_lab(img[None].float() / 255.0), y_lab[j:j + 1])[0].numpy()
                    rel_d = f"samples/{safe}_{col}_diff.png"
                    write_image(art / rel_d, _heatmap(de, vmax=20.0))
                    diffs[col] = rel_d
            rows.append({"cell_type": test.labels[i], "id": test.ids[i], "images": images, "diffs": diffs})
        _write_json(art / "samples" / "manifest.json",
                    {"columns": ["X", *methods, "Y"], "rows": rows, "diff": "CIEDE2000 vs Y, 0 (black) to 20"})
        self.copy_curves(art, methods)

    def reset_artifacts(self) -> Path:
        """Empty ``artifacts/{confusion,samples,curves}`` (they are rewritten from the stages)."""
        art = self.run_dir / "artifacts"
        for sub in ("confusion", "samples", "curves"):
            shutil.rmtree(art / sub, ignore_errors=True)
            (art / sub).mkdir(parents=True, exist_ok=True)
        return art

    def write_confusions(self, art: Path, methods: list[str], clf_eval: dict[str, Any], labels: list[str],
                         title: str) -> None:
        """The classifier's own confusion matrix on Y, and one per method on its test outputs."""
        classes = list(self.classifier().classes)
        _write_json(art / "confusion" / "classifier.json",
                    {"classes": classes, "matrix": clf_eval["confusion"], "title": "classifier on real Y (test)"})
        idx = {c: i for i, c in enumerate(classes)}
        truth = np.array([idx.get(c, -1) for c in labels])
        for m in methods:
            mat = np.zeros((len(classes), len(classes)), dtype=int)
            for t, p in zip(truth, self.predictions(m), strict=True):
                if t >= 0:
                    mat[t, p] += 1
            _write_json(art / "confusion" / f"{m}.json",
                        {"classes": classes, "matrix": mat.tolist(), "title": title.format(m=m)})

    def copy_curves(self, art: Path, methods: list[str]) -> None:
        """Training logs of the trained methods and of the classifier."""
        logs = {m: self.fit_stage(m).dir / "work" / "train_log.jsonl" for m in methods}
        logs["classifier"] = self.classifier_stage().dir / "work" / "train_log.jsonl"
        for m, log_file in logs.items():
            if log_file.exists():
                shutil.copyfile(log_file, art / "curves" / f"{m}.jsonl")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))


def _heatmap(values: np.ndarray, vmax: float) -> np.ndarray:
    import matplotlib

    cmap = matplotlib.colormaps["magma"]
    rgba = cmap(np.clip(values / vmax, 0, 1))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


class _NullBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _bar(total: int, enabled: bool):
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="run-all", unit="stage")
