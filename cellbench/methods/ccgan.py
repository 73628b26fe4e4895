"""``ccgan``: the conditional cycleGAN of paper sec. 5.2 (trained by :class:`~cellbench.train.CCGANTrainer`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..nets import PatchDiscriminator
from ..options import check_float
from ..train import CCGANTrainer, CCGANWeights
from .base import register_normalizer
from .generators import GeneratorPairNormalizer, NetConfig, int_list, seeded

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class CCGANConfig(NetConfig):
    """:class:`~cellbench.methods.generators.NetConfig` plus the discriminators and eq. (6)'s weights.

    Parameters
    ----------
    disc_widths, disc_strides:
        Discriminator architecture (:class:`~cellbench.nets.PatchDiscriminator`; one stride per
        block, ``len(disc_widths) + 1``).
    lambda_gen, lambda_cycle, lambda_identity, lambda_paired:
        Weights of eq. (6) (paper: 1, 10, 10, 10); unpaired data sets ``lambda_paired`` to 0.
    """

    disc_widths: tuple[int, ...] = (128, 256, 512, 1024)
    disc_strides: tuple[int, ...] = (2, 2, 2, 1, 1)
    lambda_gen: float = 1.0
    lambda_cycle: float = 10.0
    lambda_identity: float = 10.0
    lambda_paired: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.disc_widths = int_list(self.disc_widths, "disc_widths")
        self.disc_strides = int_list(self.disc_strides, "disc_strides")
        if len(self.disc_strides) != len(self.disc_widths) + 1:
            raise ConfigError(f"disc_strides={list(self.disc_strides)}: needs one stride per discriminator block, "
                              f"{len(self.disc_widths) + 1} for disc_widths={list(self.disc_widths)}")
        for name in ("lambda_gen", "lambda_cycle", "lambda_identity", "lambda_paired"):
            setattr(self, name, check_float(getattr(self, name), name, min=0.0))


@register_normalizer
class CCGANNormalizer(GeneratorPairNormalizer):
    """ccGAN (paper sec. 5.2): two U-Net generators and two PatchGAN discriminators trained on eq. (1)-(6).

    Options: :class:`CCGANConfig` (the shared :class:`~cellbench.methods.generators.NetConfig`
    plus the discriminators and the weights of eq. (6)). ``feature_net``, ``vgg_weights`` and
    ``classifier_dir`` are accepted for a uniform command line; ccGAN has no perceptual loss and
    ignores them.
    """

    name = "ccgan"
    description = "conditional cycleGAN: U-Net generators + 70x70 PatchGAN discriminators (paper sec. 5.2)"
    config_class = CCGANConfig
    config: CCGANConfig
    signature_keys = (
        "disc_widths",
        "disc_strides",
        "lambda_gen",
        "lambda_cycle",
        "lambda_identity",
        "lambda_paired",
        "mode",
    )

    def make_discriminator(self) -> PatchDiscriminator:
        return PatchDiscriminator(self.config.disc_widths, strides=self.config.disc_strides)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.G_xy, "discriminator": seeded(0, self.make_discriminator)}

    def build_trainer(self, paired: bool, seed: int) -> CCGANTrainer:
        c = self.config
        if c.feature_net != "vgg16" or c.vgg_weights or c.classifier_dir:
            log.info("ccgan has no perceptual loss: feature_net/vgg_weights/classifier_dir are ignored")
        side = c.crop_size
        for stride in c.disc_strides:  # 4x4 kernels, padding 1
            side = (side + 2 - 4) // stride + 1
        if side < 1:
            raise ConfigError(f"crop_size {c.crop_size} is too small for the PatchGAN discriminator; use at least 32")
        gens = seeded(seed, lambda: (self.make_generator(), self.make_generator()))
        discs = seeded(seed + 1, lambda: (self.make_discriminator(), self.make_discriminator()))
        weights = CCGANWeights(
            gen=c.lambda_gen,
            cycle=c.lambda_cycle,
            identity=c.lambda_identity,
            paired=c.lambda_paired if paired else 0.0,
        )
        sig = {**self.arch_signature(), "paired": paired}
        return CCGANTrainer(gens, discs, self.train_config(), weights=weights, signature=sig,
                            **self.trainer_options())


__all__ = ["CCGANConfig", "CCGANNormalizer"]
