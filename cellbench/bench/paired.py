"""The paired track: X/Y pairs of the same cells (``synthetic``, ``paired:ROOT``, ``resim:DIR``).

Stages of its own: ``data`` (train/val/test pairs, uint8), ``resim`` (``resim:DIR`` only: the
re-simulated pairs), ``test-masks`` (region masks of the test Y images when the dataset has none),
``per-image-<m>`` (each method's per-image values, keyed by its evaluation stage). Methods are
scored against their Y partner (paired image metrics, colour statistics, agreement and prediction
consistency with the classifier on Y, accuracy, realism); the ``ceiling`` reference is a second
rendering y2 of the same scenes (synthetic data only). Across methods, the track adds paired
bootstrap intervals of the difference of every per-image metric (``paired_diff``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data.sets import LabelledSet, PairedSet
from ..data.spec import DataSpec
from ..errors import ConfigError
from ..results import Record
from .cache import Stage, StageCache, source_version
from .config import RunConfig
from .fitting import stage_name
from .store import load_arrays, load_paired, load_tensors, save_arrays, save_paired, save_tensors, to_uint8
from .track import MIN_REALISM_IMAGES, Evaluation, RunContext, SampleRow, folder_fingerprint

log = logging.getLogger(__name__)

__all__ = ["PairedTrack"]

SPLITS = ("train", "val", "test")


class PairedTrack:
    """Registered pairs (see the module docstring)."""

    kind = "paired"
    title = None  # the default report title
    mcnemar_basis = "agreement"
    confusion_title = "classifier on {m}(X) (test)"

    def __init__(self, spec: DataSpec, cfg: RunConfig, cache: StageCache, *, seed: int = 0,
                 progress: bool = True) -> None:
        if spec.kind not in ("synthetic", "paired", "resim"):
            raise ConfigError(f"--data {spec}: the paired track needs synthetic, paired:ROOT or resim:DIR")
        self.spec, self.cfg, self.cache, self.seed, self.progress = spec, cfg, cache, seed, progress
        self._sets: dict[str, PairedSet] = {}
        self._masks: torch.Tensor | None = None
        self._proba: dict[str, np.ndarray] = {}  # the classifier's probabilities on y / y2 (this process)
        self._per_image: dict[str, dict[str, np.ndarray]] = {}  # loaded by summary_records, for the artifacts
        #: ``paired:ROOT`` streamed (run profile ``stream``): the training pairs are read on demand
        #: (:mod:`cellbench.data.stream`, no decoded copy in the stage cache or in memory); validation and
        #: test pairs are decoded and cached as always (the per-image paired evaluation holds the test split)
        self.stream = self._stream_from_config() if spec.kind == "paired" else None
        #: None: the paired evaluation is per image, over every test output (no bounded subset)
        self.eval_cap = None

    def _stream_from_config(self):
        from ..data.folders import PairedFolder
        from .cross import streaming_from_config

        return streaming_from_config(self.cfg, lambda: 2 * len(PairedFolder(self.spec.path, seed=self.seed).items),
                                     "paired data (training pairs)")

    # -- data ---------------------------------------------------------------------------------------
    def data_key(self) -> dict[str, Any]:
        key: dict[str, Any] = {"kind": self.spec.kind, "size": self.cfg.size, "seed": self.seed,
                               "version": __version__}
        if self.spec.kind == "synthetic":
            key.update(options=dict(sorted(self.spec.options.items())), synthetic_n=self.cfg.synthetic_n)
            if self.cfg.synthetic_test_n:
                key["synthetic_test_n"] = self.cfg.synthetic_test_n
        else:
            key["dataset"] = folder_fingerprint(self.spec.path)
        if self.spec.kind in ("synthetic", "resim"):  # the simulator's code and parameter files
            key["simulator"] = self._simulator_hash()
        if self.spec.kind == "resim":
            key["resim_limit_per_class"] = self.cfg.resim_limit_per_class
        return key

    @staticmethod
    def _simulator_hash() -> str:
        """The simulator's source hash (read once per process by :func:`simulator_fingerprint`)."""
        from ..eval.validate import simulator_fingerprint

        return simulator_fingerprint()["source_sha256"]

    def classifier_key(self) -> dict[str, Any]:
        return {"data": self.data_key()}

    def describe(self) -> dict[str, Any]:
        return self.data_key()

    def check_methods(self, methods: Sequence[str]) -> list[str]:
        return list(methods)

    def split(self, name: str) -> PairedSet:
        if name not in self._sets and self.stream is not None:
            return self._streamed_split(name)
        if name not in self._sets:
            st = self.cache.stage("data", self.data_key())
            if not self.cache.ready(st):
                log.info("stage data: preparing %s", self.spec.kind)
                self.cache.begin(st)
                if self.spec.kind == "synthetic":  # every split in one pool of simulation workers
                    for s, data in self._synthetic_splits().items():
                        save_paired(st, s, data)
                else:
                    for s in SPLITS:
                        save_paired(st, s, self._make_split(s))
                self.cache.finish(st)
            self._sets.update({s: load_paired(st, s, keep_uint8=(s != "train")) for s in SPLITS})
        return self._sets[name]

    def _streamed_split(self, name: str) -> PairedSet:
        """A streamed ``paired:ROOT``: train read on demand; val and test in the ``data-stream`` stage."""
        from ..data.folders import PairedFolder
        from ..data.stream import LazyImages

        assert self.stream is not None
        if name == "train":
            items = PairedFolder(self.spec.path, seed=self.seed).select("train")
            if not items:
                raise ConfigError(f"{self.spec.path}: split 'train' is empty")
            share = self.stream.share("train") / 2
            lazy = [LazyImages([getattr(it, side) for it in items], size=self.cfg.size, cache_mb=share,
                               workers=self.stream.workers) for side in ("x", "y")]
            self._sets["train"] = PairedSet(lazy[0], lazy[1], [it.cls for it in items],  # type: ignore[arg-type]
                                            [it.id for it in items])
            return self._sets["train"]
        st = self.cache.stage("data-stream", self.data_key())
        if not self.cache.ready(st):
            log.info("stage data-stream: preparing the val and test pairs of %s", self.spec.path)
            self.cache.begin(st)
            for s in SPLITS[1:]:
                save_paired(st, s, self._make_split(s))
            self.cache.finish(st)
        self._sets.update({s: load_paired(st, s, keep_uint8=True) for s in SPLITS[1:]})
        return self._sets[name]

    def _synthetic_splits(self) -> dict[str, PairedSet]:
        """Every split of the embedded simulator's data (8-bit; the test split with its second Y rendering)."""
        from ..sim import synthetic_splits

        opts = {"n": str(self.cfg.synthetic_n)}
        if self.cfg.synthetic_test_n:
            opts["test_n"] = str(self.cfg.synthetic_test_n)
        spec = DataSpec("synthetic", None, {**opts, **self.spec.options})
        return synthetic_splits(spec, SPLITS, size=self.cfg.size, second_y=("test",))

    def _make_split(self, split: str) -> PairedSet:
        from ..data.folders import PairedFolder

        root = self.spec.path if self.spec.kind == "paired" else self._resim_root()
        # uint8, as the data stage stores it: a 2,000-pair split is 0.8 GB instead of 3.1 GB as float32
        return PairedFolder(root, seed=self.seed).load(split, size=self.cfg.size, uint8=True)

    def _resim_root(self):
        from ..sim import resimulate_folder

        limit = self.cfg.resim_limit_per_class or None
        st = self.cache.stage("resim", {"real": folder_fingerprint(self.spec.path), "size": self.cfg.size,
                                         "seed": self.seed, "limit": limit, "version": __version__,
                                         "simulator": self._simulator_hash()})
        if not self.cache.ready(st):
            self.cache.begin(st)
            st.write_dir("pairs", lambda tmp: resimulate_folder(self.spec.path, tmp, size=self.cfg.size,
                                                                seed=self.seed, limit_per_class=limit,
                                                                progress=self.progress))
            self.cache.finish(st)
        return st.path("pairs")

    def classifier_data(self) -> tuple[LabelledSet, LabelledSet]:
        train, val = self.split("train"), self.split("val")
        return LabelledSet(train.y, train.labels, train.ids), LabelledSet(val.y, val.labels, val.ids)

    def train_data(self) -> PairedSet:
        return self.split("train")

    def test_inputs(self) -> torch.Tensor:
        return self.split("test").x

    def test_labels(self) -> list[str]:
        return list(self.split("test").labels)

    def test_ids(self) -> list[str]:
        return list(self.split("test").ids)

    def reference_images(self) -> dict[str, torch.Tensor]:
        test = self.split("test")
        return {"y": test.y} if test.y2 is None else {"y": test.y, "y2": test.y2}

    def reference_labels(self) -> list[str]:
        return self.test_labels()

    def test_masks(self) -> torch.Tensor | None:
        """Region masks of the test Y images: the dataset's, else the project's segmentation (a stage)."""
        from ..eval.evaluate import region_masks

        test = self.split("test")
        if test.masks is not None:
            return test.masks
        if self._masks is None:
            st = self.cache.stage("test-masks", {"data": self.data_key(),
                                                  "version": source_version("cellbench.segmentation")})
            if not self.cache.ready(st):
                self.cache.begin(st)
                masks = region_masks(test, seed=self.seed)
                save_tensors(st, "masks.safetensors", {"masks": masks.to(torch.uint8)})
                self.cache.finish(st)
            self._masks = load_tensors(st, "masks.safetensors")["masks"]
        return self._masks

    # -- evaluation ---------------------------------------------------------------------------------
    def _reference_proba(self, ctx: RunContext, key: str) -> np.ndarray | None:
        """The classifier's class probabilities on the test ``y`` (or ``y2``), once per process."""
        from ..eval.evaluate import class_probabilities

        if key not in self._proba:
            proba = class_probabilities(ctx.classifier(), self.reference_images()[key])
            if proba is None:
                return None
            self._proba[key] = proba
        return self._proba[key]

    def _per_image_stage(self, ctx: RunContext, method: str) -> Stage:
        return self.cache.stage(f"per-image-{stage_name(method)}", {"eval": ctx.eval_stage(method).key})

    def _save_per_image(self, ctx: RunContext, method: str, values: dict[str, np.ndarray]) -> None:
        st = self._per_image_stage(ctx, method)
        if self.cache.ready(st):  # left by a run killed before its evaluation stage finished: same values
            return
        self.cache.begin(st)
        save_arrays(st, "per_image.npz", values)
        self.cache.finish(st)

    def load_per_image(self, ctx: RunContext, method: str) -> dict[str, np.ndarray] | None:
        """A method's per-image values (``{"<metric>/<region>": (N,)}``), or None when its stage is missing."""
        st = self._per_image_stage(ctx, method)
        if not self.cache.ready(st):
            return None
        return load_arrays(st, "per_image.npz")

    def evaluate(self, ctx: RunContext, method: str, outputs: torch.Tensor, pred: np.ndarray,
                 proba: np.ndarray | None = None, index: np.ndarray | None = None) -> tuple[list[Record], np.ndarray]:
        if index is not None:  # the paired evaluation is per image: it needs every output (eval_cap is None)
            raise ValueError("the paired track evaluates every test output; got a subset")
        from ..eval.evaluate import class_probabilities, paired_evaluation, realism_records

        test, clf, ref = self.split("test"), ctx.classifier(), ctx.reference_predictions()
        ev = paired_evaluation(method, outputs, test, run=ctx.run_name, classifier=clf, y_pred=ref["y"],
                               g_pred=pred, y_proba=self._reference_proba(ctx, "y"),
                               g_proba=proba if proba is not None else class_probabilities(clf, outputs),
                               masks=self.test_masks(), seed=ctx.seed)
        records = ev.records
        self._save_per_image(ctx, method, ev.per_image)
        if ctx.realism and len(test) < MIN_REALISM_IMAGES:
            log.warning("realism metrics skipped: %d test images (at least %d needed)", len(test), MIN_REALISM_IMAGES)
        elif ctx.realism:
            records += realism_records(ctx.run_name, method, real=test.y, fake=outputs,
                                       real_features=ctx.reference_features(),
                                       fake_features=clf.features(outputs).float().cpu().numpy(), seed=ctx.seed)
        return records, pred == ref["y"]

    def reference_names(self) -> list[str]:
        # only the simulator renders the test scenes twice (y2); known without loading any data
        return ["ceiling"] if self.spec.kind == "synthetic" else []

    def evaluate_reference(self, ctx: RunContext, name: str) -> Evaluation | None:
        """The ceiling: the classifier on y vs on a second rendering y2 (synthetic data only)."""
        from ..eval.evaluate import evaluate_paired

        test = self.split("test")
        if name != "ceiling" or test.y2 is None:
            return None
        ref = ctx.reference_predictions()
        records = evaluate_paired("ceiling", test.y2, test, run=ctx.run_name, classifier=ctx.classifier(),
                                  y_pred=ref["y"], g_pred=ref["y2"], y_proba=self._reference_proba(ctx, "y"),
                                  g_proba=self._reference_proba(ctx, "y2"), masks=self.test_masks(),
                                  seed=ctx.seed, role="reference")
        return Evaluation(records, to_uint8(test.y2), ref["y2"], ref["y2"] == ref["y"])

    def summary_records(self, ctx: RunContext, evaluations: dict[str, Evaluation]) -> list[Record]:
        """Paired bootstrap intervals of the differences between every two evaluated methods (``paired_diff``)."""
        from ..eval.evaluate import paired_difference_records

        values = {}
        for m in evaluations:
            v = self.load_per_image(ctx, m)
            if v is None:
                log.warning("%s: no per-image values (stage per-image-%s missing); it is left out of the paired "
                            "bootstrap intervals (delete its eval-%s stage to recompute them)", m, stage_name(m),
                            stage_name(m))
                continue
            values[m] = self._per_image[m] = v
        return paired_difference_records(ctx.run_name, values, seed=ctx.seed)

    def per_image_values(self, method: str) -> dict[str, np.ndarray] | None:
        """Per-image values of a method loaded by this run's :meth:`summary_records` (for the artifacts)."""
        return self._per_image.get(method)

    def sample_rows(self, outputs: dict[str, torch.Tensor], per_class: int) -> tuple[list[str], list[SampleRow]]:
        test = self.split("test")
        chosen: list[int] = []
        for c in sorted(set(test.labels)):
            chosen += [i for i, lab in enumerate(test.labels) if lab == c][:per_class]
        rows = []
        for i in chosen:
            images = {"X": to_uint8(test.x[i]), **{m: out[i] for m, out in outputs.items()}, "Y": to_uint8(test.y[i])}
            rows.append(SampleRow(test.labels[i], test.ids[i], images, target="Y"))
        return ["X", *outputs, "Y"], rows

    def metadata(self) -> dict[str, Any]:
        return {"data": str(self.spec), "track": "paired"}
