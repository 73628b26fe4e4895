"""The cross-system track: ``cellbench run-all --data cross:x=DIR,y=DIR``.

The question users bring: *my classifier was trained on system Y; can I normalize system X
images instead of retraining?* Two labelled single-system folders with no pairs:

1. ``cross-data``  both folders split 80/10/10 (seeded, stratified); classes present in only one
                   system are reported and excluded from the accuracy; optional scale
                   normalization of X to Y's cell size (``--scale wbc|rbc``)
2. the classifier is trained on Y train (early stopping on Y val), as in the paired track
3. every method able to learn without pairs is fitted on the X and Y train splits (ccGAN as a
   CycleGAN, pcNet with the Gram style loss, HM by per-region moment matching, the classical ones
   as they are); ``identity`` (raw X) is always added as the baseline
4. the headline: the Y classifier's accuracy on transformed X test images (95 % Wilson
   intervals), per class, and its gain over raw X (``accuracy_gain``, percentage points); realism
   (C2ST, FID, KID) and colour statistics against the Y test images; McNemar on per-image
   correctness
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data.cross import Streaming
from ..data.sets import LabelledSet, UnpairedSet
from ..data.spec import DataSpec
from ..errors import ConfigError
from ..results import Record
from .cache import StageCache
from .config import RunConfig
from .store import load_labelled, save_labelled, to_uint8
from .track import MIN_REALISM_IMAGES, Evaluation, RunContext, SampleRow, folder_fingerprint

log = logging.getLogger(__name__)

__all__ = ["CrossTrack"]

PARTS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
BASELINE = "identity"


class CrossTrack:
    """Two unpaired labelled folders (see the module docstring)."""

    kind = "cross"
    title = "cellbench cross-system benchmark"
    mcnemar_basis = "accuracy"
    confusion_title = "Y classifier on {m}(X test)"

    def __init__(self, spec: DataSpec, cfg: RunConfig, cache: StageCache, *, seed: int = 0,
                 x_test: str | None = None, scale: str | None = None, stream: Streaming | None = None) -> None:
        if spec.kind != "cross":
            raise ConfigError(f"--data {spec}: the cross-system track needs cross:x=DIR,y=DIR")
        self.spec, self.cfg, self.cache, self.seed = spec, cfg, cache, seed
        self.x_test_dir = x_test
        self.scale = None if scale in (None, "none") else scale
        #: read images on demand (cellbench.data.stream): no decoded copy of the folders in the stage
        #: cache or in memory; the sets are the same pixels (what the cached uint8 sets hold)
        self.stream = stream
        self._data: dict[str, Any] | None = None

    # -- data ---------------------------------------------------------------------------------------
    def _limit(self) -> int | None:
        return self.cfg.cross_limit_per_class or None

    def data_key(self) -> dict[str, Any]:
        return {"kind": "cross", "x": folder_fingerprint(self.spec.options["x"]),
                "y": folder_fingerprint(self.spec.options["y"]),
                "x_test": folder_fingerprint(self.x_test_dir) if self.x_test_dir else None, "scale": self.scale,
                "size": self.cfg.size, "seed": self.seed, "limit_per_class": self._limit(), "version": __version__}

    def classifier_key(self) -> dict[str, Any]:
        # the classifier sees only Y: X, its test folder and its scaling do not invalidate it
        return {"y": folder_fingerprint(self.spec.options["y"]), "size": self.cfg.size, "seed": self.seed,
                "limit_per_class": self._limit(), "version": __version__}

    def describe(self) -> dict[str, Any]:
        return self.data_key()

    def check_methods(self, methods: Sequence[str]) -> list[str]:
        from ..methods import NORMALIZERS

        unpaired = [m for m in NORMALIZERS.names() if "unpaired" in NORMALIZERS.get(m).data_kinds]
        chosen = list(methods) if methods else unpaired
        for m in chosen:
            kind = m.split(":")[0]
            if "unpaired" not in NORMALIZERS.get(kind).data_kinds:
                raise ConfigError(f"method {m!r} needs registered pairs; unpaired methods: {', '.join(unpaired)}")
        return chosen if BASELINE in chosen else [BASELINE, *chosen]  # the raw-X baseline of the gain

    def data(self) -> dict[str, Any]:
        if self._data is None and self.stream is not None:
            from ..data.cross import load_cross

            cd = load_cross(self.spec.options["x"], self.spec.options["y"], size=self.cfg.size, seed=self.seed,
                            x_test_dir=self.x_test_dir, scale=self.scale, limit_per_class=self._limit(),
                            stream=self.stream)
            self._data = {**dict(zip(PARTS, (cd.train.x, cd.train.y, cd.val.x, cd.val.y, cd.x_test, cd.y_test),
                                     strict=True)),
                          "shared": cd.shared_classes, "x_only": cd.x_only, "y_only": cd.y_only,
                          "tiny": cd.tiny_classes, "scale_factor": cd.scale_factor}
        if self._data is None:
            st = self.cache.stage("cross-data", self.data_key())
            if not self.cache.ready(st):
                from ..data.cross import load_cross

                self.cache.begin(st)
                cd = load_cross(self.spec.options["x"], self.spec.options["y"], size=self.cfg.size, seed=self.seed,
                                x_test_dir=self.x_test_dir, scale=self.scale, limit_per_class=self._limit())
                for name, s in zip(PARTS, (cd.train.x, cd.train.y, cd.val.x, cd.val.y, cd.x_test, cd.y_test),
                                   strict=True):
                    save_labelled(st, name, s)
                st.write_json("classes.json", {"shared": cd.shared_classes, "x_only": cd.x_only,
                                               "y_only": cd.y_only, "tiny": cd.tiny_classes,
                                               "scale_factor": cd.scale_factor})
                self.cache.finish(st)
            self._data = {**{n: load_labelled(st, n) for n in PARTS}, **st.load_json("classes.json")}
        return self._data

    def classifier_data(self) -> tuple[LabelledSet, LabelledSet]:
        return self.data()["y_train"], self.data()["y_val"]

    def train_data(self) -> UnpairedSet:
        return UnpairedSet(self.data()["x_train"], self.data()["y_train"])

    def test_inputs(self) -> torch.Tensor:
        return self.data()["x_test"].images

    def test_labels(self) -> list[str]:
        return list(self.data()["x_test"].labels)

    def reference_images(self) -> dict[str, torch.Tensor]:
        return {"y": self.data()["y_test"].images}

    def reference_labels(self) -> list[str]:
        return list(self.data()["y_test"].labels)

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, ctx: RunContext, method: str, outputs: torch.Tensor, pred: np.ndarray,
                 proba: np.ndarray | None = None) -> tuple[list[Record], np.ndarray]:
        from ..eval.evaluate import proportion_records, realism_records, unpaired_colour_records

        d, clf = self.data(), ctx.classifier()
        labels = self.test_labels()
        shared = set(d["shared"])
        keep = np.array([lab in shared for lab in labels], dtype=bool)
        classes = list(clf.classes)
        truth = np.array([classes.index(lab) if lab in classes else -1 for lab in labels])
        correct = (pred == truth) & keep
        excluded = sorted({lab for lab in labels if lab not in shared})
        records = proportion_records(ctx.run_name, method, "accuracy", correct[keep],
                                     [lab for lab, k in zip(labels, keep, strict=True) if k],
                                     extra={"on": "transformed X test", "excluded_classes": excluded})
        y_test = d["y_test"]
        n = min(len(outputs), len(y_test))
        if ctx.realism and n >= MIN_REALISM_IMAGES:
            records += realism_records(ctx.run_name, method, real=y_test.images[:n], fake=outputs[:n],
                                       real_features=ctx.reference_features(),
                                       fake_features=clf.features(outputs).float().cpu().numpy(), seed=ctx.seed)
        records += unpaired_colour_records(ctx.run_name, method, outputs, labels, y_test.images, y_test.labels,
                                           seed=ctx.seed)
        return records, correct

    def reference_names(self) -> list[str]:
        return []

    def evaluate_reference(self, ctx: RunContext, name: str) -> Evaluation | None:
        return None

    def summary_records(self, ctx: RunContext, evaluations: dict[str, Evaluation]) -> list[Record]:
        from ..eval.evaluate import accuracy_gain_records

        acc = {m: next(r for r in ev.records if r.metric == "accuracy" and r.cell_type == "all")
               for m, ev in evaluations.items()}
        return accuracy_gain_records(ctx.run_name, acc, baseline=BASELINE)

    def sample_rows(self, outputs: dict[str, torch.Tensor], per_class: int) -> tuple[list[str], list[SampleRow]]:
        d = self.data()
        x_test, y_test = d["x_test"], d["y_test"]
        rows = []
        for cls in sorted(d["shared"]):
            xs = [i for i, lab in enumerate(x_test.labels) if lab == cls][:per_class]
            ys = [j for j, lab in enumerate(y_test.labels) if lab == cls]
            for k, i in enumerate(xs):
                images = {"X": to_uint8(x_test.images[i]), **{m: out[i] for m, out in outputs.items()}}
                if ys:
                    images["Y (another cell)"] = to_uint8(y_test.images[ys[k % len(ys)]])
                rows.append(SampleRow(cls, x_test.ids[i], images))
        return ["X", *outputs, "Y (another cell)"], rows

    def metadata(self) -> dict[str, Any]:
        d = self.data()
        return {"data": str(self.spec), "track": "cross", "x_test": self.x_test_dir, "scale": self.scale,
                "scale_factor": d.get("scale_factor"), "shared_classes": d["shared"], "x_only_classes": d["x_only"],
                "y_only_classes": d["y_only"], "tiny_classes": d["tiny"]}
