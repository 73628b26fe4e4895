"""The WBC classifier network and its saved-model format (the benchmark's judge).

A timm network trained from scratch on the target system's (Y) images
(:func:`cellbench.train.classifier.train_classifier` trains it). The paper (sec. 6) asks whether a
cell classification network gives a transformed image ``G(x)`` the same class as the real target
image ``y``; besides the class scores, the network exposes its penultimate features (for FID/KID)
and its last convolutional feature maps (for a Gram-matrix perceptual loss, the paper's eq. (8)
with this network in place of VGG-16, the improvement proposed in the paper's conclusion).

A saved classifier is a folder::

    DIR/classifier.json        {"format", "arch", "classes", "input_size", "preset", "model_kwargs", ...}
    DIR/model.safetensors      the weights (and the normalisation constants)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import CheckpointError, ConfigError
from ..fs import atomic_path, atomic_write
from ..tensors import as_float01, check_batch

META_FILE = "classifier.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "cellbench-classifier/1"

# ImageNet statistics (timm's default); fixed constants, so the input normalisation never adapts
# to the colours being measured.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WBCClassifier(torch.nn.Module):
    """A white-blood-cell classifier wrapping a timm network.

    Every method takes ``images`` as a float tensor ``(N, 3, H, W)`` with values in [0, 1] at any
    ``H, W``; it is resized to ``input_size x input_size`` (antialiased bilinear) and normalised
    with the stored mean/std inside, so callers pass images exactly as the data layer gives them.

    Parameters
    ----------
    arch:
        timm model name (``timm.list_models()``).
    classes:
        Class names; output index ``i`` is ``classes[i]``.
    input_size:
        Side of the square network input, in pixels.
    model_kwargs:
        Extra arguments for ``timm.create_model`` (a preset's architecture variant).
    preset:
        Name of the preset it was trained with (recorded only).
    """

    def __init__(self, arch: str, classes: Sequence[str], input_size: int, *,
                 model_kwargs: dict[str, Any] | None = None, preset: str | None = None,
                 drop_rate: float = 0.0, channels_last: bool = True) -> None:
        super().__init__()
        import timm

        if not classes:
            raise ConfigError("a classifier needs at least one class")
        self.arch = str(arch)
        self.classes: list[str] = list(classes)
        self.input_size = int(input_size)
        self.model_kwargs: dict[str, Any] = _tuples(dict(model_kwargs or {}))
        self.preset = preset
        self.info: dict[str, Any] = {}
        if not timm.is_model(self.arch):
            raise ConfigError(f"unknown timm architecture {self.arch!r}; see timm.list_models()")
        # pretrained=False always: nothing is downloaded (local weights: see pretrained_path).
        self.net = timm.create_model(self.arch, pretrained=False, num_classes=len(self.classes),
                                     drop_rate=drop_rate, **self.model_kwargs)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        # channels_last is faster on CPU; it also changes the conv kernels' rounding, so a loaded
        # classifier uses the same layout as the trained one (identical logits after a round trip).
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    # -- forward paths -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.mean.device

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to ``input_size`` and normalise: ``(N, 3, H, W)`` [0, 1] (or uint8, divided by 255 in
        float32: the values a float copy of 8-bit images holds) -> ``(N, 3, s, s)``."""
        check_batch(images, allow_uint8=True)
        x = as_float01(images.to(self.device)).to(torch.float32)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores ``(N, C)`` (unnormalised log-probabilities), differentiable."""
        return self.net(self.prepare(images))

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature maps ``(N, C', h, w)`` (for a Gram perceptual loss, eq. (8)).

        Differentiable with respect to ``images``; the classifier's own weights are frozen after
        training, so a generator can be optimised through it.
        """
        return self.net.forward_features(self.prepare(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate pooled features ``(N, D)`` (the input of the last linear layer; for FID/KID)."""
        return self.net.forward_head(self.feature_maps(images), pre_logits=True).flatten(1)

    @property
    def feature_dim(self) -> int:
        return int(self.net.num_features)

    @contextmanager
    def eval_mode(self):
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def predict(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Predicted class indices into :attr:`classes`, a CPU ``LongTensor`` ``(N,)``.

        Runs in eval mode without gradients, ``batch_size`` images at a time.
        """
        check_batch(images, allow_uint8=True)
        out = []
        with self.eval_mode():
            for i in range(0, len(images), max(1, int(batch_size))):
                out.append(self.logits(images[i:i + batch_size]).argmax(1).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """:meth:`features` for many images: eval mode, no gradients, batched; CPU ``(N, D)``."""
        check_batch(images, allow_uint8=True)
        out = []
        with self.eval_mode():
            for i in range(0, len(images), max(1, int(batch_size))):
                out.append(self.features(images[i:i + batch_size]).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.feature_dim)

    # -- persistence ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "arch": self.arch, "classes": self.classes, "input_size": self.input_size,
                "preset": self.preset, "model_kwargs": self.model_kwargs, "channels_last": self.channels_last,
                "cellbench_version": __version__, "info": self.info}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``classifier.json`` and ``model.safetensors`` into ``directory`` (created), each atomically."""
        d = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(d / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp))
        atomic_write(d / META_FILE, json.dumps(self.meta(), indent=1, default=json_default))
        return d


def load_classifier(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> WBCClassifier:
    """Load a classifier saved by :meth:`WBCClassifier.save` (eval mode, weights frozen).

    Raises
    ------
    CheckpointError
        When ``classifier.json`` or ``model.safetensors`` is missing, unreadable, or does not
        match (wrong kind of folder, other architecture or classes); the message names the file.
    """
    d = Path(directory)
    meta_path, weights_path = d / META_FILE, d / WEIGHTS_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: not found; {d} is not a saved classifier "
                              "(train one with `train_classifier` or `cellbench run-all`)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable ({exc}); delete the folder and retrain") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a cellbench classifier file (expected format {FORMAT!r})")
    missing = [k for k in ("arch", "classes", "input_size") if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path}: missing field(s) {', '.join(missing)}; "
                              "delete the folder and retrain")
    try:
        clf = WBCClassifier(meta["arch"], meta["classes"], int(meta["input_size"]),
                            model_kwargs=meta.get("model_kwargs") or {}, preset=meta.get("preset"),
                            channels_last=bool(meta.get("channels_last", True)))
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: cannot build the network ({exc})") from None
    clf.info = dict(meta.get("info") or {})
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: not found; the classifier folder {d} is incomplete, "
                              "retrain it")
    try:
        state = load_file(str(weights_path))
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path}: unreadable safetensors file ({exc}); retrain") from None
    try:
        clf.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{weights_path}: weights do not match {meta['arch']} with "
                              f"{len(meta['classes'])} classes ({first})") from None
    clf.to(device).eval().requires_grad_(False)
    return clf


def json_default(o: Any) -> Any:
    """JSON encoding of the values a classifier's configuration holds (tuples, paths, devices)."""
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def _tuples(kw: dict[str, Any]) -> dict[str, Any]:
    """TOML/JSON give lists; timm wants tuples for channel/layer specs."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


__all__ = ["FORMAT", "META_FILE", "WEIGHTS_FILE", "WBCClassifier", "json_default", "load_classifier"]
