"""In-memory data handed to normalizers and metrics.

Images are ``float32`` tensors ``(N, 3, H, W)`` in [0, 1]; masks are ``uint8`` tensors
``(N, H, W)`` holding the labels of :mod:`cellbench.data.masks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PairedSet:
    """Registered pairs: ``x[i]`` (source system X) and ``y[i]`` (target system Y) show one cell.

    ``y2`` optionally holds a second rendering of each Y scene (new noise and misregistration);
    it gives the ceiling no method can beat. ``masks`` come from the scene of ``y``.
    """

    x: torch.Tensor
    y: torch.Tensor
    labels: list[str]
    ids: list[str] = field(default_factory=list)
    masks: torch.Tensor | None = None
    y2: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.shape != self.y.shape:
            raise ValueError(f"x {tuple(self.x.shape)} and y {tuple(self.y.shape)} differ in shape")
        if len(self.labels) != len(self.x):
            raise ValueError("one label per pair is needed")
        if not self.ids:
            self.ids = [str(i) for i in range(len(self.x))]

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index) -> PairedSet:
        idx = torch.as_tensor(index, dtype=torch.long)
        il = idx.tolist()
        return PairedSet(
            x=self.x[idx], y=self.y[idx], labels=[self.labels[i] for i in il], ids=[self.ids[i] for i in il],
            masks=None if self.masks is None else self.masks[idx],
            y2=None if self.y2 is None else self.y2[idx],
        )


@dataclass
class LabelledSet:
    """Single-system images with class labels (classifier training, unpaired X or Y sets)."""

    images: torch.Tensor
    labels: list[str]
    ids: list[str] = field(default_factory=list)
    masks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.images):
            raise ValueError("one label per image is needed")
        if not self.ids:
            self.ids = [str(i) for i in range(len(self.images))]

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class UnpairedSet:
    """Images of the two systems with no correspondence (the cross-system track)."""

    x: LabelledSet
    y: LabelledSet


def as_unpaired(data: PairedSet) -> UnpairedSet:
    """View paired data as unpaired (for methods that ignore correspondence)."""
    return UnpairedSet(
        x=LabelledSet(data.x, list(data.labels), list(data.ids), data.masks),
        y=LabelledSet(data.y, list(data.labels), list(data.ids), data.masks),
    )
