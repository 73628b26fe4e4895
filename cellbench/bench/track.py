"""What a benchmark track says: its data, splits, training data, and the records of an evaluation.

A :class:`Track` is the part of a run that depends on the kind of data; the run loop
(:mod:`cellbench.bench.runner`) is the same for every track:

* :class:`~cellbench.bench.paired.PairedTrack`: registered X/Y pairs (``synthetic``,
  ``paired:ROOT``, ``resim:DIR``); methods are scored against their Y partner.
* :class:`~cellbench.bench.cross.CrossTrack`: two unpaired labelled folders
  (``cross:x=DIR,y=DIR``); methods are scored by the Y classifier's accuracy on transformed X.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..data.sets import LabelledSet, PairedSet, UnpairedSet
from ..results import Record

__all__ = ["Track", "Evaluation", "SampleRow", "folder_fingerprint", "RunContext"]

#: The classifier two-sample test trains on half the test images and tests on the other half.
MIN_REALISM_IMAGES = 8


@dataclass
class Evaluation:
    """One method's (or reference's) test evaluation, as stored in its ``eval-*`` stage."""

    records: list[Record]
    outputs: torch.Tensor  # (N, 3, H, W) uint8
    pred: np.ndarray  # (N,) classifier predictions on the outputs
    success: np.ndarray  # (N,) bool: the per-item outcome McNemar compares


@dataclass
class SampleRow:
    """One row of the image grid: named columns of uint8 ``(3, H, W)`` images (and ΔE00 maps vs ``target``)."""

    cell_type: str
    id: str
    images: dict[str, torch.Tensor]
    target: str | None = None  # the column the difference maps are computed against
    extra: dict[str, Any] = field(default_factory=dict)


class RunContext(Protocol):
    """What a track may ask of the run (implemented by :class:`~cellbench.bench.runner.Benchmark`)."""

    run_name: str
    seed: int
    realism: bool

    def classifier(self) -> Any: ...
    def reference_predictions(self) -> dict[str, np.ndarray]: ...
    def reference_features(self) -> np.ndarray: ...
    def eval_stage(self, name: str) -> Any:
        """The evaluation stage of a method or reference (its ``.key`` keys what derives from it)."""


class Track(Protocol):
    """The data side of a benchmark run (see the module docstring)."""

    kind: str  # "paired" or "cross"
    title: str  # the report's title
    mcnemar_basis: str  # what Evaluation.success means: "agreement" or "accuracy"
    confusion_title: str  # "{m}" is replaced by the method

    def data_key(self) -> dict[str, Any]:
        """Content and configuration of the data and its splits (no paths)."""

    def classifier_key(self) -> dict[str, Any]:
        """What the classifier's training data depend on."""

    def describe(self) -> dict[str, Any]:
        """Human-readable data settings for fingerprints and results metadata."""

    def check_methods(self, methods: Sequence[str]) -> list[str]:
        """The methods this track runs (validated; the track may add a baseline)."""

    def classifier_data(self) -> tuple[LabelledSet, LabelledSet]:
        """Y train and Y val."""

    def train_data(self) -> PairedSet | UnpairedSet:
        """What every method is fitted on."""

    def test_inputs(self) -> torch.Tensor:
        """The X test images every method transforms."""

    def test_labels(self) -> list[str]:
        """True classes of the test inputs."""

    def reference_images(self) -> dict[str, torch.Tensor]:
        """Real target images the classifier predicts once per run (``"y"`` first)."""

    def reference_labels(self) -> list[str]:
        """True classes of ``reference_images()["y"]``."""

    def evaluate(self, ctx: RunContext, method: str, outputs: torch.Tensor, pred: np.ndarray,
                 proba: np.ndarray | None = None, index: np.ndarray | None = None) -> tuple[list[Record], np.ndarray]:
        """Records of one method's float outputs ``(N, 3, H, W)`` and its per-item success; ``pred`` the
        classifier's predictions on them and ``proba`` its class probabilities (None: not available),
        both from one classifier pass in the runner, on every test input. ``index``: ``outputs`` are
        only those of these test items (a streamed run's bounded subset for the image-level metrics,
        when the track has an ``eval_cap``); None: every test item."""

    def reference_names(self) -> list[str]:
        """Reference rows evaluated without a method (the paired track's ``ceiling``)."""

    def evaluate_reference(self, ctx: RunContext, name: str) -> Evaluation | None:
        """A reference's evaluation (records with ``role="reference"``)."""

    def summary_records(self, ctx: RunContext, evaluations: dict[str, Evaluation]) -> list[Record]:
        """Records computed across methods (the cross track's accuracy gain)."""

    def sample_rows(self, outputs: dict[str, torch.Tensor], per_class: int) -> tuple[list[str], list[SampleRow]]:
        """Columns and rows of the image grid."""

    # Optional: ``per_image_values(method) -> dict[str, np.ndarray] | None`` (the paired track's per-image
    # values, written to ``artifacts/per-image/<method>.csv``); a track without it writes none.

    def metadata(self) -> dict[str, Any]:
        """Extra configuration stored in the results metadata."""


def folder_fingerprint(root: str | os.PathLike) -> str:
    """A key for a dataset folder's content, not its path: names, sizes and modification times.

    Hidden files and ``splits.csv`` (written by the data layer on first use) are left out, so
    reading a folder does not change its fingerprint; a copied folder (new mtimes) is read anew.
    """
    import hashlib

    base = Path(root)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name == "splits.csv":
                continue
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p.relative_to(base).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
