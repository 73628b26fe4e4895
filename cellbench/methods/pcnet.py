"""``pcnet``: the perceptual cycle network of paper sec. 5.3 (trained by :class:`~cellbench.train.PCNetTrainer`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nets import build_feature_net
from ..options import check_choice, check_float
from ..train import PCNetTrainer, PCNetWeights
from .base import register_normalizer
from .generators import GeneratorPairNormalizer, NetConfig, seeded

FEATURE_NORMS = ("none", "auto")


@dataclass(kw_only=True)
class PCNetConfig(NetConfig):
    """:class:`~cellbench.methods.generators.NetConfig` (batch 2, the paper's) plus eq. (7)'s weights.

    Parameters
    ----------
    lambda_cycle, lambda_identity, lambda_paired, lambda_feat:
        Weights of eq. (7) (paper: all 10); unpaired data sets ``lambda_paired`` to 0 and compares
        batch-mean Gram matrices.
    lambda_feat_unpaired:
        ``lambda_feat`` for unpaired data (``None``: the same). Without the paired term the Gram
        loss is the only term that pulls G(x) towards system Y (cycle and identity are satisfied by
        the identity map), so a preset that damps it for paired data must restore it here.
    feature_net:
        ``vgg16`` (paper; ImageNet weights from ``vgg_weights`` or the torch hub cache, never
        downloaded) or ``classifier`` (the WBC classifier in ``classifier_dir``).
    feature_norm:
        ``none`` (paper: Gram matrices of the raw features) or ``auto`` (each Gram matrix divided
        by its Frobenius norm, for feature networks other than VGG-16 whose activation scale
        would otherwise swamp the other terms of eq. (7)).
    """

    batch_size: int = 2
    lambda_cycle: float = 10.0
    lambda_identity: float = 10.0
    lambda_paired: float = 10.0
    lambda_feat: float = 10.0
    lambda_feat_unpaired: float | None = None
    feature_norm: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lambda_cycle", "lambda_identity", "lambda_paired", "lambda_feat"):
            setattr(self, name, check_float(getattr(self, name), name, min=0.0))
        if self.lambda_feat_unpaired is not None:
            self.lambda_feat_unpaired = check_float(self.lambda_feat_unpaired, "lambda_feat_unpaired", min=0.0)
        self.feature_norm = check_choice(self.feature_norm, "feature_norm", FEATURE_NORMS)


@register_normalizer
class PCNetNormalizer(GeneratorPairNormalizer):
    """pcNet (paper sec. 5.3): two U-Net generators trained on eq. (3)-(5), (7), (8); no discriminators.

    Options: :class:`PCNetConfig` (the shared :class:`~cellbench.methods.generators.NetConfig`
    plus the weights of eq. (7) and the feature network of eq. (8)).
    """

    name = "pcnet"
    #: the benchmark chooses VGG-16 or the WBC classifier for eq. (8)
    uses_feature_net = True
    description = "perceptual cycle network: U-Net generators + VGG-16 Gram loss, no discriminators (sec. 5.3)"
    config_class = PCNetConfig
    config: PCNetConfig
    signature_keys = (
        "lambda_cycle",
        "lambda_identity",
        "lambda_paired",
        "lambda_feat",
        "lambda_feat_unpaired",
        "mode",
        "feature_net",
        "feature_norm",
    )

    def networks(self) -> dict[str, torch.nn.Module]:
        nets = {"generator": self.G_xy}
        if self.config.feature_net == "vgg16":
            from ..nets import VGG16Features

            nets["feature_network"] = VGG16Features()  # frozen; its weights are read only for training
        return nets

    def build_trainer(self, paired: bool, seed: int) -> PCNetTrainer:
        c = self.config
        phi = build_feature_net(c.feature_net, vgg_weights=c.vgg_weights, classifier_dir=c.classifier_dir)
        gens = seeded(seed, lambda: (self.make_generator(), self.make_generator()))
        weights = PCNetWeights(
            cycle=c.lambda_cycle,
            identity=c.lambda_identity,
            paired=c.lambda_paired if paired else 0.0,
            feat=c.lambda_feat if paired or c.lambda_feat_unpaired is None else c.lambda_feat_unpaired,
        )
        sig = {**self.arch_signature(), "paired": paired}
        return PCNetTrainer(gens, phi, self.train_config(), weights=weights, paired=paired, signature=sig,
                            normalize_gram=c.feature_norm == "auto", **self.trainer_options())


__all__ = ["PCNetConfig", "PCNetNormalizer"]
