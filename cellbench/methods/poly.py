"""``poly``: global third-order polynomial colour regression fitted on paired pixels.

Each output channel is a least-squares combination of all 20 monomials
``R^a G^b B^c`` with ``a + b + c <= 3`` of the input pixel (including the constant). The fit
uses a seeded random sample of corresponding pixels, as :class:`~cellbench.methods.simple.AffineNormalizer`
does.
"""

from __future__ import annotations

from itertools import combinations_with_replacement
from typing import Self

import torch

from ..data.sets import PairedSet, UnpairedSet
from .base import Normalizer, register_normalizer
from .simple import require_pairs, sample_pixels


def monomial_exponents(degree: int) -> list[tuple[int, int, int]]:
    """Exponents ``(a, b, c)`` of all monomials ``R^a G^b B^c`` with ``a + b + c <= degree``.

    Ordered by total degree, then lexicographically by channel combination; for degree 3 there
    are 20 of them (1 + 3 + 6 + 10).
    """
    out: list[tuple[int, int, int]] = []
    for d in range(degree + 1):
        for combo in combinations_with_replacement(range(3), d):
            e = [0, 0, 0]
            for c in combo:
                e[c] += 1
            out.append((e[0], e[1], e[2]))
    return out


def polynomial_features(pixels: torch.Tensor, degree: int) -> torch.Tensor:
    """Monomial features of ``pixels`` ``(P, 3)`` -> ``(P, K)`` (K = 20 for degree 3)."""
    feats = [torch.ones_like(pixels[:, 0])]
    prev = [(pixels[:, 0] * 0 + 1, -1)]  # (monomial, last channel used) of the previous degree
    for _ in range(degree):
        cur = []
        for mono, last in prev:
            for c in range(max(last, 0), 3):
                cur.append((mono * pixels[:, c], c))
        feats.extend(m for m, _ in cur)
        prev = cur
    return torch.stack(feats, dim=1)


@register_normalizer
class PolyNormalizer(Normalizer):
    """Global polynomial colour map ``y_c = sum_k w_ck * m_k(x)`` fitted by least squares.

    Parameters
    ----------
    degree:
        Total degree of the monomials (3: 20 terms per output channel).
    max_pixels:
        Corresponding pixels sampled (seeded) from the training pairs.
    ridge:
        Tikhonov weight added to the normal equations (relative to their trace), which keeps
        the fit stable when the training colours span a thin subspace.
    """

    name = "poly"
    description = "global 3rd-order polynomial colour regression (20 monomials) on paired pixels"

    def __init__(self, degree: int = 3, max_pixels: int = 1_000_000, ridge: float = 1e-9) -> None:
        super().__init__(degree=degree, max_pixels=max_pixels, ridge=ridge)
        k = len(monomial_exponents(degree))
        w = torch.zeros(k, 3)
        w[1:4] = torch.eye(3)  # identity map before fitting
        self.weights = w  # (K, 3)

    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0) -> Self:
        data = require_pairs(data, self.name)
        x, y = sample_pixels(data, self.params["max_pixels"], seed)
        f = polynomial_features(x, self.params["degree"])  # (P, K) float64
        gram = f.T @ f
        lam = self.params["ridge"] * torch.trace(gram) / gram.shape[0]
        gram = gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype)
        self.weights = torch.linalg.solve(gram, f.T @ y).float().contiguous()  # (K, 3)
        self.fitted = True
        return self

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        px = images.permute(0, 2, 3, 1).reshape(-1, 3)
        f = polynomial_features(px, self.params["degree"])
        out = f @ self.weights.to(images.device)
        return out.reshape(n, h, w, 3).permute(0, 3, 1, 2).contiguous()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.weights = state["weights"].float()

    def to(self, device) -> Self:
        self.weights = self.weights.to(device)
        return self
