"""ccGAN: the conditional cycleGAN of paper sec. 5.2.

Code (paper): G_xy (G), G_yx (F), D_x (D_x), D_y (D_y); x, y: batches of systems X and Y;
x_p, y_p of eq. (5) are the same batches when the data is paired.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..nets import PatchDiscriminator, UNetGenerator
from ..nets.losses import discriminator_loss, generator_adversarial_loss
from .cycle import CycleTrainer
from .loop import TrainConfig


@dataclass(frozen=True)
class CCGANWeights:
    """Eq. (6): lambda1 L_gen + lambda2 L_cycle + lambda3 L_identity + lambda4 L_paired
    (paper: 1, 10, 10, 10).

    Unpaired mode (CycleGAN) sets ``paired = 0``.
    """

    gen: float = 1.0
    cycle: float = 10.0
    identity: float = 10.0
    paired: float = 10.0


class CCGANTrainer(CycleTrainer):
    """Each iteration (paper sec. 5.5): step both discriminators on eq. (1); then, with the
    discriminators frozen, step G_xy on eq. (6) while G_yx is frozen, then G_yx while G_xy is frozen.
    """

    method = "ccgan"

    def __init__(
        self,
        generators: tuple[UNetGenerator, UNetGenerator],
        discriminators: tuple[PatchDiscriminator, PatchDiscriminator],
        config: TrainConfig,
        *,
        weights: CCGANWeights,
        signature: dict[str, Any],
        paired: bool = True,
        **kw,
    ) -> None:
        nets = {
            "G_xy": generators[0],
            "G_yx": generators[1],
            "D_x": discriminators[0],
            "D_y": discriminators[1],
        }
        super().__init__(nets, list(nets), config, signature=signature, **kw)
        self.weights, self.paired = weights, paired

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One iteration; every network sees all of its inputs of a step in one batch (see
        :meth:`~cellbench.train.cycle.CycleTrainer.generator_step`)."""
        G_xy, G_yx, D_x, D_y = (self.nets[k] for k in ("G_xy", "G_yx", "D_x", "D_y"))
        b = x.shape[0]

        # 0. the generators' current translations for the discriminators
        self.set_trainable()
        with torch.no_grad(), self.autocast():
            fake_y0 = G_xy(x)  # G(x)
            fake_x0 = G_yx(y)  # F(y)

        # 1. discriminators, eq. (1): D_y real y vs G(x), D_x real x vs F(y)
        self.set_trainable("D_x", "D_y")
        with self.autocast():
            logits_y = D_y.patch_logits(torch.cat([y, fake_y0]))
            logits_x = D_x.patch_logits(torch.cat([x, fake_x0]))
            loss_d_y = discriminator_loss(logits_y[:b], logits_y[b:])
            loss_d_x = discriminator_loss(logits_x[:b], logits_x[b:])
        self.optimize(loss_d_x + loss_d_y, "D_x", "D_y")

        # 2. G_xy with D_x, D_y and G_yx frozen: eq. (6) = lambda1 eq. (2) + the shared eq. (3)-(5)
        fake_y, g_terms = self.generator_step(
            "G_xy", x, y, fake_x0, adversarial=lambda fake: generator_adversarial_loss(D_y.patch_logits(fake))
        )
        # 3. G_yx with D_x, D_y and the updated G_xy frozen
        _, f_terms = self.generator_step(
            "G_yx", y, x, fake_y.detach(), adversarial=lambda fake: generator_adversarial_loss(D_x.patch_logits(fake))
        )
        self.set_trainable(*self.trained)
        self.losses.add(D_x=loss_d_x, D_y=loss_d_y)
        self.log_generator_terms(g_terms, f_terms)
