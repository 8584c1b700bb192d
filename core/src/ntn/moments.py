"""A core's MSE Newton system from the training data's polynomial moments, at a cost independent of N.

Every site reads the same φ(x) (p entries), so f is linear in Φ(x) = φ(x)^{⊗L}, and for any core the
environment is E_n = W Φ_n, where W is the rest of the network evaluated on basis vectors. Φ_n has only
S = C(p+L−1, L) distinct entries, the degree-L monomials z_n of φ_n (φ carries a 1, so they hold every
monomial of degree ≤ L in x). Folding W onto them gives V (C, S, P) with E_n[c] = V_cᵀ z_n, and

    Σ_n E_nᵀ E_n = Σ_c V_cᵀ Z V_c,        Σ_n E_nᵀ y_n = Σ_c V_cᵀ Z_y[:, c],
    Z = Σ_n z_n z_nᵀ (S, S),              Z_y = Σ_n z_n y_nᵀ (S, C).

Z and Z_y are accumulated once, over mini-batches. After that a core's system costs 2·C·P·S·(S + P)
flops whatever N is (p = 9, L = 3: S = 165, against Σ_n over 16k samples of a P² outer product).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from ntn.losses import MSE, CrossEntropy
from ntn.models import TensorNetwork, Unit, basis_tuples

MAX_BASIS_ENTRIES = 2**23  # entries of a core's environment on all p^L basis tuples (64 MB)


def monomial_count(L: int, p: int) -> int:
    """S = C(p + L − 1, L): the number of distinct entries of φ^{⊗L}."""
    return math.comb(p + L - 1, L)


def applies(model: TensorNetwork, loss: MSE | CrossEntropy, n_samples: int) -> bool:
    """Whether the moment form is exact (MSE), bounded in memory, and cheaper than a pass over the
    samples (measured in benchmarks/bench_ntn.py: so from N ≥ S on)."""
    basis = model.phys_dim**model.L
    largest = max(model.core(unit).numel() for unit in model.units) * model.output_dim
    return (
        isinstance(loss, MSE)
        and monomial_count(model.L, model.phys_dim) <= n_samples
        and basis * largest <= MAX_BASIS_ENTRIES
    )


class Moments:
    """Z, Z_y and the map from index tuples to monomials, for one training set and one model shape (L, p, C)."""

    def __init__(self, model: TensorNetwork, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        """:param batches: (φ(x) (B, p), y (B, C)) pairs covering the training set once"""
        L, p = model.L, model.phys_dim
        dtype, device = model.top_cores[0].dtype, model.top_cores[0].device
        self.monomials = torch.combinations(torch.arange(p, device=device), L, with_replacement=True)  # (S, L)
        S = len(self.monomials)
        self.Z = torch.zeros(S, S, dtype=dtype, device=device)
        self.Z_y = torch.zeros(S, model.output_dim, dtype=dtype, device=device)
        for phi, y in batches:
            z = phi[:, self.monomials].prod(dim=2)  # (B, S)
            self.Z.addmm_(z.T, z)
            self.Z_y.addmm_(z.T, y)
        # monomial_of[t] = the monomial of basis tuple t (row-major): its sorted tuple, found by its base-p number
        powers = p ** torch.arange(L - 1, -1, -1, device=device)
        lookup = torch.empty(p**L, dtype=torch.long, device=device)
        lookup[self.monomials @ powers] = torch.arange(S, device=device)
        self.monomial_of = lookup[basis_tuples(L, p, device).sort(dim=1).values @ powers]  # (p^L,)

    def folded_environment(self, model: TensorNetwork, unit: Unit) -> Tensor:
        """V with E_n[c, q] = Σ_m V[c, m, q] z_n[m]: (C, S, P)."""
        E_basis = model.basis_environment(unit)  # (p^L, C, P)
        V = E_basis.new_zeros(len(self.monomials), *E_basis.shape[1:]).index_add_(0, self.monomial_of, E_basis)
        return V.transpose(0, 1)

    def system(self, model: TensorNetwork, unit: Unit, loss: MSE) -> tuple[Tensor, Tensor]:
        """The same sums as `gram.accumulate_system`: (Σ_n E_nᵀ K E_n (P, P), Σ_n E_nᵀ r_n (P,))."""
        theta = model.core(unit).reshape(-1)  # (P,)
        V = self.folded_environment(model, unit)  # (C, S, P)
        C, S, P = V.shape
        ZV = self.Z @ V  # (C, S, P)
        gram = V.permute(2, 0, 1).reshape(P, C * S) @ ZV.reshape(C * S, P)  # Σ_c V_cᵀ Z V_c
        Ey = torch.einsum("csq,sc->q", V, self.Z_y)  # Σ_n E_nᵀ y_n
        K = loss.curvature(C)  # r_n = K (E_n θ − y_n)
        return K * gram, K * (gram @ theta - Ey)
