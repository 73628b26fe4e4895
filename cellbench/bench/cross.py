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

**Streamed** (run profile ``stream``, ``--stream on``, or ``auto`` for folders beyond 4 GB as float32):
the folders are read on demand through :mod:`cellbench.data.stream` (no ``cross-data`` stage), the
runner evaluates the test inputs in chunks, and the image-level metrics use at most :data:`EVAL_CAP`
(realism) and :data:`COLOUR_CAP` (colour statistics) test images per side, seeded subsets (every
image when there are fewer: the in-memory values); accuracy, the gain and McNemar count every test image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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
#: A streamed run computes the realism metrics (C2ST, FID, KID) on at most this many test images per
#: side (a seeded subset; all of them when there are fewer, as in memory): they hold whole float
#: stacks, 0.2 GB per side at 256 px. Accuracy, the gain and McNemar use every test image.
EVAL_CAP = 256
#: ... and the colour statistics (:func:`cellbench.eval.evaluate.unpaired_colour_records`) on at most this
#: many of those: they segment and convert both sides to CIELAB at once, measured +2.1 GB for 200 images
#: a side at 256 px and +1.35 GB for 128 (about 10 MB an image pair), so about +0.7 GB at this cap.
COLOUR_CAP = 64


def decoded_mb(n_images: int, size: int) -> float:
    """MB of ``n_images`` decoded as float32 ``(3, size, size)`` (what an in-memory load holds)."""
    return n_images * 3 * size * size * 4 / 2**20


def streaming_from_config(cfg, count_images: Callable[[], int], what: str) -> Streaming | None:
    """The run profile's ``stream`` choice for a folder dataset: ``"on"``, or ``"auto"`` when its
    ``count_images()`` images as float32 would exceed :data:`~cellbench.bench.config.STREAM_AUTO_MB`,
    gives a :class:`Streaming` of ``stream_cache_mb`` (and returns freed batch buffers to the system);
    ``"off"`` or a small ``"auto"`` dataset: ``None`` (in memory). Shared by the cross and paired tracks."""
    from .config import STREAM_AUTO_MB

    mode = getattr(cfg, "stream", "off")
    if mode == "off":
        return None
    if mode == "auto":
        mb = decoded_mb(count_images(), cfg.size)
        if mb <= STREAM_AUTO_MB:
            return None
        log.info("%s: %.0f MB of decoded images (> %.0f MB): streaming them (cache %.0f MB)", what, mb,
                 STREAM_AUTO_MB, cfg.stream_cache_mb)
    from ..data.stream import fix_mmap_threshold

    fix_mmap_threshold()  # batch-sized temporaries go back to the system when freed (no heap growth)
    return Streaming(cache_mb=float(cfg.stream_cache_mb))


def eval_subset(n: int, cap: int | None, seed: int) -> np.ndarray:
    """Indices (sorted) of at most ``cap`` of ``n`` items, seeded; ``arange(n)`` when ``n <= cap``."""
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


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
        #: (not given: from the run profile's ``stream`` option, :meth:`_stream_from_config`)
        self.stream = stream if stream is not None else self._stream_from_config()
        self._data: dict[str, Any] | None = None

    def _stream_from_config(self) -> Streaming | None:
        return streaming_from_config(self.cfg, self._count_images, "cross data")

    def _count_images(self) -> int:
        from ..data.folders import LabelledFolder

        dirs = [self.spec.options["x"], self.spec.options["y"], *([self.x_test_dir] if self.x_test_dir else [])]
        return sum(len(LabelledFolder(d, seed=self.seed).items) for d in dirs)

    @property
    def eval_cap(self) -> int | None:
        """Streamed: at most this many test images enter the image-level metrics (realism, colour;
        a seeded subset, :func:`eval_subset`); the accuracy counts every test image. None: all."""
        return EVAL_CAP if self.stream is not None else None

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
                 proba: np.ndarray | None = None, index: np.ndarray | None = None) -> tuple[list[Record], np.ndarray]:
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
        # the image-level metrics: on every test image, or (streamed, index given) on the seeded subsets
        # ``index`` of X test (the outputs given) and of Y test (eval_subset with the same cap)
        out_labels = labels if index is None else [labels[i] for i in index]
        y_images, y_labels = y_test.images, list(y_test.labels)
        if index is not None or not isinstance(y_images, torch.Tensor):
            y_index = eval_subset(len(y_test), self.eval_cap, ctx.seed + 1)
            y_images = y_images[torch.as_tensor(y_index, dtype=torch.long)] if len(y_index) else \
                torch.zeros((0, *tuple(y_images.shape[1:])))
            y_labels = [y_labels[i] for i in y_index]
        n = min(len(outputs), len(y_images))
        if ctx.realism and n >= MIN_REALISM_IMAGES:
            records += realism_records(ctx.run_name, method, real=y_images[:n], fake=outputs[:n],
                                       real_features=ctx.reference_features(),
                                       fake_features=clf.features(outputs).float().cpu().numpy(), seed=ctx.seed)
        c_out, c_labels, c_y, c_y_labels = outputs, out_labels, y_images, y_labels
        if self.eval_cap is not None:  # streamed: the colour statistics on at most COLOUR_CAP images a side
            pick = eval_subset(len(outputs), COLOUR_CAP, ctx.seed + 2)
            pick_y = eval_subset(len(y_images), COLOUR_CAP, ctx.seed + 3)
            if len(pick) < len(outputs):
                c_out, c_labels = outputs[torch.as_tensor(pick)], [out_labels[i] for i in pick]
            if len(pick_y) < len(y_images):
                c_y, c_y_labels = y_images[torch.as_tensor(pick_y)], [y_labels[i] for i in pick_y]
        records += unpaired_colour_records(ctx.run_name, method, c_out, c_labels, c_y, c_y_labels, seed=ctx.seed)
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
