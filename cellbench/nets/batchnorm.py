"""Batch-norm train/inference consistency: measure the gap, re-estimate population statistics.

A batch-norm layer normalises with the statistics of the current batch in training and with
running (exponential moving) averages in inference, so a network trained with small batches or
small feature maps can compute a different function at inference than the one its losses
optimised (Ioffe & Szegedy 2015, sec. 3.1; Wu & Johnson 2021, "Rethinking 'Batch' in
BatchNorm", sec. 3-4). The paper's 7-level U-Net (sec. 5.4) normalises 2x2 maps at its innermost
level, from a batch of 4 images (ccGAN) or 2 (pcNet).

* :func:`train_eval_outputs` / :func:`bn_gap`: the same input through a module in training mode
  (batch statistics) and in inference mode (running statistics), leaving every buffer, mode and
  random-number state as it was, so a trainer can log the gap without changing its run.
* :func:`precise_bn`: "precise BN" (Wu & Johnson 2021, sec. 3.2): with the final weights fixed,
  replace the running averages by statistics of the whole training population, estimated over
  many training batches, each layer seeing the input distribution training gave it (upstream
  layers normalise with batch statistics, as in training).
* :func:`set_bn_momentum`: PyTorch's ``momentum`` is the weight of the new batch (default 0.1);
  Keras' ``BatchNormalization(momentum=0.99)``, which the paper's code ran with, is PyTorch's 0.01.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

BatchNorm = nn.modules.batchnorm._BatchNorm


def batch_norms(module: nn.Module) -> list[BatchNorm]:
    """The batch-norm layers of ``module`` (in ``modules()`` order)."""
    return [m for m in module.modules() if isinstance(m, BatchNorm)]


def set_bn_momentum(module: nn.Module, momentum: float | None) -> int:
    """Set every batch-norm layer's PyTorch ``momentum`` (the new batch's weight in the running
    average; ``None``: cumulative average). Keras' momentum ``m`` is PyTorch's ``1 - m``.
    Returns the number of layers changed."""
    if momentum is not None and not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"batch-norm momentum must lie in [0, 1] (or be None), got {momentum!r}")
    layers = batch_norms(module)
    for m in layers:
        m.momentum = None if momentum is None else float(momentum)
    return len(layers)


@contextlib.contextmanager
def preserved_state(module: nn.Module) -> Iterator[nn.Module]:
    """Restore ``module``'s buffers (running statistics, batch counters) and every submodule's
    train/eval mode on exit, whatever ran inside."""
    modes = [(m, m.training) for m in module.modules()]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield module
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, mode in modes:
            m.train(mode)


@torch.no_grad()
def train_eval_outputs(module: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``module(batch)`` in training mode (batch statistics) and in inference mode (running
    statistics), without gradients and without changing the module: buffers and modes are
    restored, and no random numbers are drawn (the generator and discriminator have no dropout).
    """
    with preserved_state(module):
        eval_out = module.eval()(batch)  # first: a training-mode pass updates the running statistics
        train_out = module.train()(batch)
    return train_out, eval_out


def bn_gap(
    module: nn.Module,
    batch: torch.Tensor,
    *,
    rows: int | None = None,
    colour_difference: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """How far inference (running statistics) is from training (batch statistics) on ``batch``.

    Parameters
    ----------
    module:
        An image-to-image network, ``(N, 3, H, W)`` in [0, 1] -> same.
    batch:
        The input as training composes it (e.g. ``cat[x, F(y), y]`` for ``G_xy``), so the
        training-mode output uses the batch statistics training uses.
    rows:
        Compare only the first ``rows`` outputs (e.g. the ``x`` part of that batch); ``None``: all.
    colour_difference:
        ``(a, b) -> per-pixel difference`` of two ``(N, 3, H, W)`` RGB images in [0, 1] (e.g.
        CIEDE2000 of their CIELAB values); its mean is reported as ``"de00"``.

    Returns
    -------
    dict
        ``"l1"``: mean absolute difference of the two outputs (intensity units of [0, 1]);
        ``"de00"`` when ``colour_difference`` is given.
    """
    train_out, eval_out = train_eval_outputs(module, batch)
    if rows is not None:
        train_out, eval_out = train_out[:rows], eval_out[:rows]
    train_out, eval_out = train_out.float(), eval_out.float()
    out = {"l1": float((train_out - eval_out).abs().mean())}
    if colour_difference is not None:
        out["de00"] = float(colour_difference(train_out.clamp(0, 1), eval_out.clamp(0, 1)).mean())
    return out


@torch.no_grad()
def precise_bn(module: nn.Module, batches: Iterable[torch.Tensor], *, max_batches: int | None = None) -> int:
    """Re-estimate every batch-norm layer's running statistics as population statistics.

    "Precise BN" (Wu & Johnson 2021, sec. 3.2): the running averages of training mix
    statistics of many past weights (an exponential average with PyTorch's momentum 0.1 spans
    about the last 10-20 iterations). With the final weights fixed, each layer's mean and
    variance are instead estimated over ``batches``, with the module in training mode so every
    layer sees the inputs it saw during training (upstream layers normalised with batch
    statistics). The variance is the pooled variance of all activations,
    ``E_b[var_b + mean_b^2] - E_b[mean_b]^2`` (batches weighted by their element count), not
    the average of per-batch variances, which misses the variance of the batch means that a
    small batch of 2x2 maps makes large. Weights are not changed.

    Parameters
    ----------
    module:
        The network; its mode is restored afterwards.
    batches:
        Inputs composed as in training (the more, the better the estimate; Wu & Johnson use
        about 100 batches of ImageNet).
    max_batches:
        Stop after this many batches.

    Returns
    -------
    int
        Number of batches used (0: nothing changed).
    """
    layers = batch_norms(module)
    if not layers:
        return 0
    sums: dict[BatchNorm, list] = {m: [0.0, None, None] for m in layers}  # count, sum x, sum x^2

    def hook(m: BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        s = sums[m]
        s[0] += x.numel() / x.shape[1]
        s1, s2 = x.sum(dims), x.square().sum(dims)
        s[1] = s1 if s[1] is None else s[1] + s1
        s[2] = s2 if s[2] is None else s[2] + s2

    momenta = [m.momentum for m in layers]
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    n = 0
    try:
        with preserved_state(module):
            module.train()
            for m in layers:
                m.momentum = 0.0  # training mode without updating the running averages
            for batch in batches:
                if max_batches is not None and n >= max_batches:
                    break
                module(batch)
                n += 1
    finally:
        for h in handles:
            h.remove()
        for m, mom in zip(layers, momenta, strict=True):
            m.momentum = mom
    if n == 0:
        return 0
    for m in layers:
        count, s1, s2 = sums[m]
        mean = s1 / count
        var = (s2 / count - mean.square()).clamp_min(0.0) * (count / max(count - 1.0, 1.0))
        if m.running_mean is not None:
            m.running_mean.copy_(mean.to(m.running_mean.dtype))
            m.running_var.copy_(var.to(m.running_var.dtype))
    return n


__all__ = [
    "batch_norms",
    "bn_gap",
    "precise_bn",
    "preserved_state",
    "set_bn_momentum",
    "train_eval_outputs",
]
