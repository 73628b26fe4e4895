"""Frozen feature networks for the perceptual loss of pcNet (paper sec. 4, 5.3, eq. (8)).

``vgg16``
    torchvision's VGG-16 convolutional part up to and including the fifth max-pool
    (``features[0:31]``; Simonyan & Zisserman 2014, table 1, column D), with ImageNet weights
    read from a local file: ``vgg_weights=PATH`` or the torch hub cache
    ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``. Nothing is downloaded. The file may
    hold torchvision's full state dict (``features.*`` and ``classifier.*`` keys) or only the
    convolutional part (``features.*`` or bare ``0.weight ...`` keys).
``classifier``
    The last convolutional feature maps of the benchmark's WBC classifier
    (:func:`cellbench.nets.classifier.load_classifier`), the improvement the paper proposes in
    its conclusion.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, MissingWeightsError
from .classifier import load_classifier

VGG16_FILE = "vgg16-397923af.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_NETS = ("vgg16", "classifier")


def default_vgg16_path() -> Path:
    """Where torchvision keeps the ImageNet VGG-16 weights:
    ``<torch hub dir>/checkpoints/vgg16-397923af.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def resolve_vgg16_weights(vgg_weights: str | os.PathLike | None = None) -> Path:
    """The VGG-16 weight file to use, or :class:`MissingWeightsError` saying what to place where."""
    path = Path(vgg_weights) if vgg_weights else default_vgg16_path()
    if path.is_file():
        return path
    where = f"--vgg-weights {path}" if vgg_weights else f"the torch hub cache: {path}"
    raise MissingWeightsError(
        f"pcNet's perceptual loss needs torchvision's ImageNet VGG-16 weights ({VGG16_FILE}), "
        f"not found at {where}; nothing is downloaded. Place {VGG16_FILE} there (or pass "
        "--vgg-weights PATH), or use the WBC classifier's features instead with "
        '--feature-net classifier --classifier-dir DIR (a trained WBC classifier)'
    )


class VGG16Features(nn.Module):
    """Frozen VGG-16 up to the fifth max-pool: ``(N, 3, H, W)`` in [0, 1] -> ``(N, 512, H/32, W/32)``."""

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        # the layers of torchvision's vgg16().features (config "D"): 13 conv + ReLU, 5 max-pools
        self.features = make_layers(cfgs["D"], batch_norm=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights is not None:
            self.load_weights(Path(weights))
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise CheckpointError(
                f"{path}: cannot read VGG-16 weights ({exc}); replace it with torchvision's {VGG16_FILE}"
            ) from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a state dict; replace it with torchvision's {VGG16_FILE}")
        if any(k.startswith("features.") for k in state):
            state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        try:
            self.features.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: not VGG-16 weights ({str(exc).splitlines()[0]}); "
                f"replace it with torchvision's {VGG16_FILE}"
            ) from None

    def train(self, mode: bool = True) -> VGG16Features:  # always frozen, in eval mode
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features((images - self.mean) / self.std)


class ClassifierFeatures(nn.Module):
    """Frozen last convolutional feature maps of the benchmark's WBC classifier.

    Wraps ``load_classifier(directory).feature_maps`` ``(N, 3, H, W)`` in [0, 1] -> ``(N, C, h, w)``;
    gradients must flow through it to the generator, which :func:`build_feature_net` checks.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        super().__init__()
        self.classifier = load_classifier(Path(directory))
        self.classifier.requires_grad_(False)
        self.classifier.eval()

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.feature_maps(images)


def build_feature_net(
    feature_net: str = "vgg16",
    *,
    vgg_weights: str | os.PathLike | None = None,
    classifier_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """The frozen feature network ``phi`` of eq. (8); fails fast when its weights are missing."""
    if feature_net == "vgg16":
        return VGG16Features(resolve_vgg16_weights(vgg_weights))
    if feature_net == "classifier":
        if not classifier_dir:
            raise ConfigError(
                "--feature-net classifier needs the classifier's folder: "
                '--classifier-dir DIR (or --set classifier_dir="DIR")'
            )
        net = ClassifierFeatures(classifier_dir)
        probe = torch.rand(1, 3, 64, 64, requires_grad=True)
        out = net(probe)
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.grad_fn is None:
            raise ConfigError(
                f"{classifier_dir}: the classifier's feature_maps must return differentiable "
                "(N, C, h, w) maps for the perceptual loss"
            )
        return net
    raise ConfigError(f"unknown feature_net {feature_net!r}; choose one of {', '.join(FEATURE_NETS)}")
