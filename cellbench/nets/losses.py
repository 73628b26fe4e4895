"""Loss functions of the paper, eq. (1)-(8), as pure functions of tensors.

The ``||.||_1`` norms of eq. (3)-(5) are taken as the mean absolute difference per pixel and
channel (as CycleGAN does), so loss weights do not depend on the image size.
"""

from __future__ import annotations

import torch

from .discriminator import log_mean_sigmoid


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. (1): ``-1/2N sum log D(y_i) - 1/2N sum log(1 - D(G(x_i)))``.

    ``D`` is the mean patch probability of :class:`~cellbench.nets.PatchDiscriminator`;
    arguments are its :meth:`patch_logits` ``(N, 1, h, w)`` for real and generated images.
    """
    return -0.5 * log_mean_sigmoid(real_logits).mean() - 0.5 * log_mean_sigmoid(-fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. (2): ``-1/N sum log D(G(x_i))`` (the non-saturating generator loss)."""
    return -log_mean_sigmoid(fake_logits).mean()


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (one term of eq. (3), (4) or (5))."""
    return (a.float() - b.float()).abs().mean()


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of feature maps ``(N, C, h, w)`` -> ``(N, C, C)``, divided by ``C h w``.

    Johnson et al. (2016), eq. (3):
    ``G_j(x)_{c,c'} = 1/(C_j H_j W_j) sum_{h,w} phi(x)_{h,w,c} phi(x)_{h,w,c'}``.
    """
    f = features.float()
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def feature_loss(gram_a: torch.Tensor, gram_b: torch.Tensor) -> torch.Tensor:
    """Eq. (8): squared Frobenius norm ``||G_j(a) - G_j(b)||_F^2`` per image, mean over the batch.

    Accepts ``(N, C, C)`` (paired) or ``(C, C)`` batch-mean Gram matrices (unpaired mode).
    """
    d = (gram_a - gram_b).reshape(-1, gram_a.shape[-2] * gram_a.shape[-1])
    return d.pow(2).sum(1).mean()
