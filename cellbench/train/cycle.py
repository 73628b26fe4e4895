"""The generator step both frameworks share: one U-Net generator stepped with the other frozen.

Code (paper): G_xy (G), G_yx (F); ``x``, ``y``: batches of systems X and Y (the same batches are
eq. (5)'s pairs ``x_p, y_p`` when the data is paired). For the generator being stepped, written
as a map ``G`` from the batch ``x`` of its source system to its target system ``y`` (for G_yx the
roles of the systems swap), with the other generator ``F`` frozen:

* eq. (3), cycle consistency: ``|F(G(x)) - x|_1 + |G(F(y)) - y|_1``
* eq. (4), identity: ``|G(y) - y|_1``
* eq. (5), paired: ``|G(x) - y|_1`` (paired data only)

ccGAN adds the adversarial term of eq. (2) in front (eq. (6)); pcNet adds the Gram-matrix
feature term of eq. (8) at the end (eq. (7)). The weighted sum is taken in the order the
equations write it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..nets.losses import l1
from .loop import Trainer

#: a method's own term of the generator loss: ``G(x)`` -> scalar loss
Term = Callable[[torch.Tensor], torch.Tensor]


class CycleTrainer(Trainer):
    """A :class:`~cellbench.train.loop.Trainer` of two generators ``G_xy`` and ``G_yx`` (paper sec. 5.5).

    Subclasses set ``self.weights`` (attributes ``cycle``, ``identity``, ``paired`` and their own
    terms' weights) and ``self.paired``, and call :meth:`generator_step` once per generator.
    """

    GENERATORS = ("G_xy", "G_yx")
    GAP_NETWORK = "G_xy"
    PRECISE_BN_NETWORKS = GENERATORS
    weights: object
    paired: bool = True

    def generator_step(
        self,
        name: str,
        x: torch.Tensor,
        y: torch.Tensor,
        fake_x: torch.Tensor,
        *,
        adversarial: Term | None = None,
        perceptual: Term | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Step generator ``name`` (``G``: x's system -> y's) with every other network frozen.

        ``fake_x`` is ``F(y)`` from the frozen other generator. The generator sees all of its
        inputs of the step in one batch ``[x, F(y), y]``, so batch norm normalises images of both
        systems with the same statistics (as at inference, where the running statistics are a
        mixture of both); the frozen networks run in inference mode.

        Parameters
        ----------
        adversarial:
            ccGAN's eq. (2) on ``G(x)`` (weight ``weights.gen``), first term of eq. (6).
        perceptual:
            pcNet's eq. (8) on ``G(x)`` (weight ``weights.feat``), last term of eq. (7).

        Returns
        -------
        ``G(x)`` and the loss terms: ``total`` and, as used, ``gen``, ``cycle``, ``identity``,
        ``paired``, ``feat``.
        """
        other = self.GENERATORS[1 - self.GENERATORS.index(name)]
        G, F = self.nets[name], self.nets[other]
        w, b = self.weights, x.shape[0]
        self.set_trainable(name)
        with self.autocast():
            fake_y, rec_y, idt_y = G(torch.cat([x, fake_x, y])).split(b)  # G(x), G(F(y)), G(y)
            terms: dict[str, torch.Tensor] = {}
            if adversarial is not None:
                terms["gen"] = adversarial(fake_y)  # eq. (2)
            terms["cycle"] = l1(F(fake_y), x) + l1(rec_y, y)  # eq. (3)
            terms["identity"] = l1(idt_y, y)  # eq. (4)
            terms["paired"] = (  # eq. (5)
                l1(fake_y, y) if self.paired and w.paired else torch.zeros((), device=x.device)
            )
            if perceptual is not None:
                terms["feat"] = perceptual(fake_y)  # eq. (8)
            weighted = [getattr(w, k) * v for k, v in terms.items()]
            total = weighted[0]
            for t in weighted[1:]:
                total = total + t  # eq. (6) / (7), left to right
        self.optimize(total, name)
        return fake_y, {"total": total, **terms}

    def log_generator_terms(self, g_terms: dict[str, torch.Tensor], f_terms: dict[str, torch.Tensor]) -> None:
        """Record both generators' terms as ``G_<term>`` (G_xy) and ``F_<term>`` (G_yx)."""
        self.losses.add(G_total=g_terms["total"], F_total=f_terms["total"])
        self.losses.add(**{f"G_{k}": v for k, v in g_terms.items() if k != "total"})
        self.losses.add(**{f"F_{k}": v for k, v in f_terms.items() if k != "total"})

    def bn_inputs(
        self, name: str, x: torch.Tensor, y: torch.Tensor, *, averaged: bool = False
    ) -> torch.Tensor | None:
        """Generator ``name``'s input of a step, ``[x, F(y), y]`` (``[y, G(x), x]`` for G_yx), with
        the other generator (its average with ``averaged``) in inference mode as in
        :meth:`generator_step`."""
        if name not in self.GENERATORS:
            return None
        src, tgt = (x, y) if name == "G_xy" else (y, x)
        other_name = self.GENERATORS[1 - self.GENERATORS.index(name)]
        other = (self.result(other_name) if averaged else self.nets[other_name]).eval()
        with torch.no_grad():
            return torch.cat([src, other(tgt), tgt])

    def sample_rows(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """x, G(x), y, F(y)."""
        return [x, self.nets["G_xy"](x), y, self.nets["G_yx"](y)]
