"""Realism: classifier two-sample test (C2ST), FID and KID.

* **C2ST** (Lopez-Paz & Oquab 2017): a tiny CNN learns to tell real y from G(x) on one half of
  the test pairs and is scored on the other half. Its held-out accuracy is 50 % when the two sets
  are indistinguishable (to this critic) and 100 % when they are trivially different. The paper's
  goal -- "the user should not be able to distinguish between transformed and real images"
  (sec. 6) -- is this test with a network in place of the user.
* **FID** (Heusel et al. 2017): Frechet distance between Gaussians fitted to two feature sets,
  ``|mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))``.
* **KID** (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  ``k(a, b) = (a.b / d + 1)^3``, averaged over random subsets.

FID and KID take feature arrays ``(N, D)`` (the WBC classifier's penultimate features in the
benchmark), so this module does not depend on the classifier. With a few hundred test images
both are noisy and FID is biased upwards (its bias falls like 1/N and grows with D): compare
methods only at equal N and feature extractor, never with published FIDs (Inception, 50k images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..tensors import as_float01
from .agreement import wilson_interval

__all__ = ["C2STResult", "c2st", "fid", "kid", "TinyCritic"]


# --------------------------------------------------------------------------- C2ST


class TinyCritic(nn.Module):
    """Three strided 3x3 convolutions (16-32-64 channels), global average pool, one logit.

    Small on purpose: it must train in seconds on CPU, and a weak critic that still separates
    the sets is evidence of a real difference. Inputs are centred per channel by the training
    mean (a colour shift is then easy to see for the first layer).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


@dataclass(frozen=True)
class C2STResult:
    """Held-out accuracy (percent) of the critic, its 95 % Wilson CI and the sample sizes."""

    accuracy: float
    ci_low: float
    ci_high: float
    n_test: int
    n_train: int
    epochs: int
    size: int


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images (float in [0, 1], or uint8) as float32 ``size x size`` (area resampling)."""
    x = as_float01(x).float()
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return nn.functional.interpolate(x, size=(size, size), mode="area")


def _train_and_score(x_tr, y_tr, x_te, mean, rng, dev, *, epochs, batch_size, lr) -> torch.Tensor:
    # fork_rng: seeding inside leaves the caller's global RNG state as it was
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(int(rng.integers(2**31)))
        net = TinyCritic().to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        loss_fn = nn.BCEWithLogitsLoss()
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(x_tr), generator=g)
            for s in range(0, len(order), batch_size):
                b = order[s: s + batch_size]
                if len(b) < 2:  # BatchNorm needs two samples
                    continue
                xb = (x_tr[b] - mean).to(dev)
                if torch.rand((), generator=g) < 0.5:  # flips: content is not what we test
                    xb = xb.flip(-1)
                loss = loss_fn(net(xb), y_tr[b].to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net.eval()
        with torch.inference_mode():
            chunks = [net((x_te[s: s + 256] - mean).to(dev)).cpu() for s in range(0, len(x_te), 256)]
    return torch.cat(chunks)


def c2st(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    seed: int = 0,
    size: int = 64,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-2,
    device: str | torch.device = "cpu",
    threads: int | None = 1,
) -> C2STResult:
    """Classifier two-sample test between real y and G(x).

    Parameters
    ----------
    real, fake:
        ``(N, 3, H, W)`` floats in [0, 1]. When both have the same length they are taken as pairs
        (``fake[i] = G(x_i)`` of ``real[i] = y_i``) and split by pair: the critic trains on the
        real and fake images of half the pairs and is tested on the other half, so no scene is
        seen in training and testing.
    seed:
        Seeds the split, the initial weights and the batch order (``torch.random.fork_rng``
        keeps the global RNG untouched).
    size:
        Images are area-downsampled to ``size x size`` (64 by default) to keep training to
        seconds on CPU; colour and low-frequency texture differences survive, very fine
        texture may not (document a larger ``size`` to look for it).
    epochs, batch_size, lr:
        Adam training schedule of :class:`TinyCritic`.
    threads:
        torch intra-op threads while training (restored afterwards); 1 by default because
        a network this small runs fastest single-threaded, and far faster on a busy machine.
        ``None`` leaves the setting alone.

    Returns
    -------
    C2STResult
        ``accuracy`` in percent (50 = indistinguishable), 95 % Wilson CI in percent.

    References
    ----------
    Lopez-Paz, D., Oquab, M. (2017). Revisiting classifier two-sample tests. ICLR.
    """
    if real.ndim != 4 or fake.ndim != 4 or real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must be (N, 3, H, W) alike")
    n_r, n_f = len(real), len(fake)
    if min(n_r, n_f) < 4:
        raise ValueError(f"C2ST needs at least 4 images per set, got {n_r} real and {n_f} fake")
    rng = np.random.default_rng(seed)
    if n_r == n_f:
        perm = rng.permutation(n_r)
        tr_r = tr_f = perm[: n_r // 2]
        te_r = te_f = perm[n_r // 2:]
    else:
        pr, pf = rng.permutation(n_r), rng.permutation(n_f)
        tr_r, te_r = pr[: n_r // 2], pr[n_r // 2:]
        tr_f, te_f = pf[: n_f // 2], pf[n_f // 2:]
    r = _resize(real.detach().cpu(), size)
    f = _resize(fake.detach().cpu(), size)
    x_tr = torch.cat([r[tr_r], f[tr_f]])
    y_tr = torch.cat([torch.ones(len(tr_r)), torch.zeros(len(tr_f))])
    x_te = torch.cat([r[te_r], f[te_f]])
    y_te = torch.cat([torch.ones(len(te_r)), torch.zeros(len(te_f))])
    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    dev = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        logits = _train_and_score(
            x_tr, y_tr, x_te, mean, rng, dev, epochs=epochs, batch_size=batch_size, lr=lr
        )
    finally:
        torch.set_num_threads(old_threads)

    correct = ((logits > 0).float() == y_te).numpy()
    k, n = int(correct.sum()), len(correct)
    lo, hi = wilson_interval(k, n)
    return C2STResult(
        accuracy=100.0 * k / n, ci_low=100.0 * lo, ci_high=100.0 * hi, n_test=n, n_train=len(x_tr),
        epochs=epochs, size=size,
    )


# --------------------------------------------------------------------------- FID / KID


def _features(a, what: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    x = np.asarray(a, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected features of shape (N, D), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: features contain NaN or inf")
    return x


def fid(features_a, features_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6).

    ``FID = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))`` with unbiased
    covariances (ddof = 1). The trace of the matrix square root is computed as
    ``sum sqrt(eig(S_a^(1/2) S_b S_a^(1/2)))`` (symmetric eigendecompositions, which avoid the
    complex round-off of ``scipy.linalg.sqrtm``); negative round-off eigenvalues are clipped.

    Parameters
    ----------
    features_a, features_b:
        ``(N_a, D)`` and ``(N_b, D)`` arrays, at least 2 rows each.

    Returns
    -------
    float
        FID in squared feature units (0 for identical sets).
    """
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa = np.atleast_2d(np.cov(a, rowvar=False))
    sb = np.atleast_2d(np.cov(b, rowvar=False))
    wa, va = np.linalg.eigh(sa)
    sqrt_a = (va * np.sqrt(np.clip(wa, 0, None))) @ va.T
    m = sqrt_a @ sb @ sqrt_a
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    d = float(np.sum((mu_a - mu_b) ** 2) + np.trace(sa) + np.trace(sb) - 2.0 * tr_sqrt)
    return max(d, 0.0)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


def kid(
    features_a, features_b, *, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0,
) -> tuple[float, float, int]:
    """Kernel inception distance (Binkowski et al. 2018): mean and std of unbiased MMD^2.

    Kernel ``k(a, b) = (a.b / D + 1)^3``; each of ``n_subsets`` rounds draws ``s`` rows of each set
    without replacement (``s = min(subset_size, N_a, N_b)``, so the subset never exceeds the test
    set) and computes the unbiased MMD^2 estimate (diagonal terms excluded). Seeded by ``seed``.

    Returns
    -------
    (mean, std, s)
        Mean and standard deviation (ddof = 0) of MMD^2 over the subsets, and the subset size.
        KID can be slightly negative for indistinguishable sets (it is unbiased).
    """
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    s = min(subset_size, len(a), len(b))
    if s < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    vals = np.array([
        _mmd2_unbiased(a[rng.choice(len(a), s, replace=False)], b[rng.choice(len(b), s, replace=False)])
        for _ in range(n_subsets)
    ])
    return float(vals.mean()), float(vals.std()), int(s)
