"""pcNet: the perceptual cycle network of paper sec. 5.3 (two generators, no discriminators).

Code (paper): G_xy (G), G_yx (F), phi (VGG-16 up to the fifth max-pool, or the WBC classifier's
features); x, y: batches of systems X and Y.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..nets import UNetGenerator
from ..nets.losses import feature_loss, gram_matrix
from .cycle import CycleTrainer
from .loop import TrainConfig


@dataclass(frozen=True)
class PCNetWeights:
    """Eq. (7): lambda1 L_cycle + lambda2 L_identity + lambda3 L_paired + lambda4 L_feat (paper: all 10).

    Unpaired mode sets ``paired = 0`` and compares batch-mean Gram matrices (style) of the
    generated batch and an unpaired batch of the target system.
    """

    cycle: float = 10.0
    identity: float = 10.0
    paired: float = 10.0
    feat: float = 10.0


class PCNetTrainer(CycleTrainer):
    """Each iteration steps G_xy on eq. (7) with G_yx frozen, then G_yx with G_xy frozen (sec. 5.5)."""

    method = "pcnet"

    def __init__(
        self,
        generators: tuple[UNetGenerator, UNetGenerator],
        feature_net: nn.Module,
        config: TrainConfig,
        *,
        weights: PCNetWeights,
        paired: bool,
        signature: dict[str, Any],
        normalize_gram: bool = False,
        **kw,
    ) -> None:
        nets = {"G_xy": generators[0], "G_yx": generators[1], "phi": feature_net}
        super().__init__(nets, ["G_xy", "G_yx"], config, signature=signature, **kw)
        feature_net.requires_grad_(False)
        self.weights, self.paired = weights, paired
        #: ``feature_norm = "auto"``: unit-norm Gram matrices (see :meth:`gram`)
        self.normalize_gram = bool(normalize_gram)

    def gram(self, images: torch.Tensor) -> torch.Tensor:
        """``G_j^phi``: Gram matrices ``(N, C, C)``; batch mean ``(C, C)`` in unpaired mode.

        With ``normalize_gram`` (``feature_norm = "auto"``) each Gram matrix is divided by its
        Frobenius norm, so eq. (8) compares only the style's direction and lies in [0, 4]
        whatever the feature network's activation scale.
        """
        g = gram_matrix(self.nets["phi"](images))
        if not self.paired:
            g = g.mean(0, keepdim=True)
        if self.normalize_gram:
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        return g if self.paired else g[0]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One iteration; each generator sees all of its inputs of a step in one batch (shared
        batch-norm statistics) and the frozen one runs in inference mode (see
        :meth:`~cellbench.train.cycle.CycleTrainer.generator_step`)."""
        G_yx = self.nets["G_yx"]
        self.set_trainable()
        with torch.no_grad(), self.autocast():
            gram_x, gram_y = self.gram(x), self.gram(y)
            fake_x0 = G_yx(y)  # F(y)

        # 1. G_xy with G_yx frozen: eq. (7) = the shared eq. (3)-(5) + lambda4 eq. (8)
        fake_y, g_terms = self.generator_step(
            "G_xy", x, y, fake_x0, perceptual=lambda fake: feature_loss(self.gram(fake), gram_y)
        )
        # 2. G_yx with the updated G_xy frozen
        _, f_terms = self.generator_step(
            "G_yx", y, x, fake_y.detach(), perceptual=lambda fake: feature_loss(self.gram(fake), gram_x)
        )
        self.set_trainable(*self.trained)
        self.log_generator_terms(g_terms, f_terms)
