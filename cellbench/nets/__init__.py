"""Networks of the paper (torch only): the U-Net generator, the PatchGAN discriminator, the frozen
feature networks of the perceptual loss, and the losses eq. (1)-(8); also the benchmark's WBC
classifier network and its saved-model format (:mod:`cellbench.nets.classifier`, imported on use:
it needs timm)."""

from .discriminator import PatchDiscriminator
from .features import VGG16Features, build_feature_net, default_vgg16_path, resolve_vgg16_weights
from .generator import UNetGenerator
from .losses import discriminator_loss, feature_loss, generator_adversarial_loss, gram_matrix, l1
from .summary import count_params, describe_network
from .tiling import transform_tiled

__all__ = [
    "PatchDiscriminator",
    "UNetGenerator",
    "VGG16Features",
    "build_feature_net",
    "count_params",
    "default_vgg16_path",
    "describe_network",
    "discriminator_loss",
    "feature_loss",
    "generator_adversarial_loss",
    "gram_matrix",
    "l1",
    "resolve_vgg16_weights",
    "transform_tiled",
]
