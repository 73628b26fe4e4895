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
from ..nets.losses import feature_loss, gram_matrix, l1
from .loop import TrainConfig, Trainer


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


class PCNetTrainer(Trainer):
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
        **kw,
    ) -> None:
        nets = {"G_xy": generators[0], "G_yx": generators[1], "phi": feature_net}
        super().__init__(nets, ["G_xy", "G_yx"], config, signature=signature, **kw)
        feature_net.requires_grad_(False)
        self.weights, self.paired = weights, paired
        self.normalize_gram = False

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
        batch-norm statistics) and the frozen one runs in inference mode (see CCGANTrainer)."""
        G_xy, G_yx = self.nets["G_xy"], self.nets["G_yx"]
        w, b = self.weights, x.shape[0]
        zero = torch.zeros((), device=x.device)
        self.set_trainable()
        with torch.no_grad(), self.autocast():
            gram_x, gram_y = self.gram(x), self.gram(y)
            fake_x0 = G_yx(y)  # F(y)

        # 1. G_xy with G_yx frozen, eq. (7)
        self.set_trainable("G_xy")
        with self.autocast():
            fake_y, rec_y, idt_y = G_xy(torch.cat([x, fake_x0, y])).split(b)  # G(x), G(F(y)), G(y)
            cycle = l1(G_yx(fake_y), x) + l1(rec_y, y)  # eq. (3)
            identity = l1(idt_y, y)  # eq. (4)
            paired = l1(fake_y, y) if self.paired and w.paired else zero  # eq. (5)
            feat = feature_loss(self.gram(fake_y), gram_y)  # eq. (8), G's counterpart
            total_g = w.cycle * cycle + w.identity * identity + w.paired * paired + w.feat * feat  # eq. (7)
        self.optimize(total_g, "G_xy")

        # 2. G_yx with the updated G_xy frozen
        self.set_trainable("G_yx")
        with self.autocast():
            fake_x, rec_x, idt_x = G_yx(torch.cat([y, fake_y.detach(), x])).split(b)  # F(y), F(G(x)), F(x)
            cycle_f = l1(G_xy(fake_x), y) + l1(rec_x, x)
            identity_f = l1(idt_x, x)
            paired_f = l1(fake_x, x) if self.paired and w.paired else zero
            feat_f = feature_loss(self.gram(fake_x), gram_x)  # eq. (8)
            total_f = w.cycle * cycle_f + w.identity * identity_f + w.paired * paired_f + w.feat * feat_f
        self.optimize(total_f, "G_yx")
        self.set_trainable(*self.trained)

        self.losses.add(
            G_total=total_g,
            F_total=total_f,
            G_cycle=cycle,
            G_identity=identity,
            G_paired=paired,
            G_feat=feat,
            F_cycle=cycle_f,
            F_identity=identity_f,
            F_paired=paired_f,
            F_feat=feat_f,
        )

    def sample_rows(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        return [x, self.nets["G_xy"](x), y, self.nets["G_yx"](y)]
