"""ccGAN: the conditional cycleGAN of paper sec. 5.2.

Code (paper): G_xy (G), G_yx (F), D_x (D_x), D_y (D_y); x, y: batches of systems X and Y;
x_p, y_p of eq. (5) are the same batches when the data is paired.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..nets import PatchDiscriminator, UNetGenerator
from ..nets.losses import discriminator_loss, generator_adversarial_loss, l1
from .loop import TrainConfig, Trainer


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


class CCGANTrainer(Trainer):
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
        **kw,
    ) -> None:
        nets = {
            "G_xy": generators[0],
            "G_yx": generators[1],
            "D_x": discriminators[0],
            "D_y": discriminators[1],
        }
        super().__init__(nets, list(nets), config, signature=signature, **kw)
        self.weights = weights

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One iteration. Every network sees all of its inputs of a step in one batch, so batch norm
        normalises images of both systems with the same statistics (as at inference, where the
        running statistics are a mixture of both); frozen networks run in inference mode."""
        G_xy, G_yx, D_x, D_y = (self.nets[k] for k in ("G_xy", "G_yx", "D_x", "D_y"))
        w, b = self.weights, x.shape[0]
        zero = torch.zeros((), device=x.device)

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

        # 2. G_xy with D_x, D_y and G_yx frozen: eq. (6) with the terms of (3)-(5) that depend on G
        self.set_trainable("G_xy")
        with self.autocast():
            fake_y, rec_y, idt_y = G_xy(torch.cat([x, fake_x0, y])).split(b)  # G(x), G(F(y)), G(y)
            gen = generator_adversarial_loss(D_y.patch_logits(fake_y))  # eq. (2)
            cycle = l1(G_yx(fake_y), x) + l1(rec_y, y)  # eq. (3)
            identity = l1(idt_y, y)  # eq. (4)
            paired = l1(fake_y, y) if w.paired else zero  # eq. (5)
            total_g = w.gen * gen + w.cycle * cycle + w.identity * identity + w.paired * paired  # eq. (6)
        self.optimize(total_g, "G_xy")

        # 3. G_yx with D_x, D_y and the updated G_xy frozen
        self.set_trainable("G_yx")
        with self.autocast():
            fake_x, rec_x, idt_x = G_yx(torch.cat([y, fake_y.detach(), x])).split(b)  # F(y), F(G(x)), F(x)
            gen_f = generator_adversarial_loss(D_x.patch_logits(fake_x))
            cycle_f = l1(G_xy(fake_x), y) + l1(rec_x, x)
            identity_f = l1(idt_x, x)
            paired_f = l1(fake_x, x) if w.paired else zero
            total_f = w.gen * gen_f + w.cycle * cycle_f + w.identity * identity_f + w.paired * paired_f
        self.optimize(total_f, "G_yx")
        self.set_trainable(*self.trained)

        self.losses.add(
            D_x=loss_d_x,
            D_y=loss_d_y,
            G_total=total_g,
            F_total=total_f,
            G_gen=gen,
            G_cycle=cycle,
            G_identity=identity,
            G_paired=paired,
            F_gen=gen_f,
            F_cycle=cycle_f,
            F_identity=identity_f,
            F_paired=paired_f,
        )

    def sample_rows(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """x, G(x), y, F(y)."""
        return [x, self.nets["G_xy"](x), y, self.nets["G_yx"](y)]
