"""Data losses with the first and second derivatives the Newton step needs.

For a batch of outputs f (B, C) and targets y, each loss gives the per-sample loss ℓ_n, its gradient
∂ℓ_n/∂f_n (B, C) and its curvature ∂²ℓ_n/∂f_n² — a (B, C, C) tensor, or a float when it is the same
multiple of the identity for every sample (then the Gram matrix E^T E is all the Newton step needs).
"""

from __future__ import annotations

import torch
from torch import Tensor


class MSE:
    """ℓ_n = (1/C) Σ_c (f_nc − y_nc)²: the mean squared error over samples and outputs."""

    name = "mse"
    labels = False  # targets are values (N, C), scored by R²
    quadratic = True  # constant curvature: J is quadratic in each core (exact steps, moments, Kronecker sums)

    def per_sample(self, f: Tensor, y: Tensor) -> Tensor:
        return (f - y).pow(2).mean(dim=1)

    def curvature(self, C: int) -> float:
        """∂²ℓ_n/∂f_n² = K·I with K = 2/C, for every sample."""
        return 2.0 / C

    def derivatives(self, f: Tensor, y: Tensor) -> tuple[Tensor, float]:
        K = self.curvature(f.shape[1])
        return K * (f - y), K


class CrossEntropy:
    """ℓ_n = −log softmax(f_n)[y_n], with the exact softmax Hessian diag(p) − p pᵀ."""

    name = "cross_entropy"
    labels = True  # targets are class labels (N,), scored by accuracy
    quadratic = False

    def per_sample(self, f: Tensor, y: Tensor) -> Tensor:
        return -torch.log_softmax(f, dim=1).gather(1, y[:, None])[:, 0]

    def derivatives(self, f: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        p = torch.softmax(f, dim=1)  # (B, C)
        gradient = p - torch.nn.functional.one_hot(y, f.shape[1]).to(p.dtype)
        curvature = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (B, C, C)
        return gradient, curvature


LOSSES = {"mse": MSE, "cross_entropy": CrossEntropy}


Loss = MSE | CrossEntropy


def get_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[name]()
