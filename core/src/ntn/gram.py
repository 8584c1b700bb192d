"""Accumulating a core's Newton system, Σ_n E_nᵀ K_n E_n and Σ_n E_nᵀ r_n, over mini-batches.

Two exact strategies:
- dense: form E (B, C, P) and multiply, 2·B·C·P² flops per batch;
- symmetric Kronecker, for MSE where E_n = l_n ⊗ φ_n ⊗ r_n (MPO2): the Gram matrix is
  Σ_n (l_n l_nᵀ) ⊗ (φ_n φ_nᵀ) ⊗ (r_n r_nᵀ), and each factor is symmetric, so only the distinct entries
  of each factor are accumulated (for bond 16 and p = 9: 136·45·136 instead of 2304² products per sample,
  6.4× fewer) and the (P, P) matrix is unpacked once per update.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ntn.losses import MSE, Loss
from ntn.models import TensorNetwork, Unit

PACKED_CHUNK_ENTRIES = 2**21  # entries of the per-sample product ll ⊗ jj formed at once (16 MB)


def accumulate_system(
    model: TensorNetwork, unit: Unit, loss: Loss, batches: Iterable[tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor, Tensor]:
    """Sums over all samples of the data loss's Hessian and gradient with respect to core `unit`.

    :param batches: (φ(x) (B, p), y) pairs covering the training set once
    :return: (Σ_n E_nᵀ K_n E_n (P, P), Σ_n E_nᵀ r_n (P,), Σ_n ||E_n||²_F (0-d)), with r_n = ∂ℓ_n/∂f and
        K_n = ∂²ℓ_n/∂f²
    """
    if loss.quadratic and model.is_kronecker(unit):
        return _accumulate_kronecker(model, unit, loss, batches)
    theta = model.core(unit).reshape(-1)  # (P,)
    P = len(theta)
    hessian = theta.new_zeros(P, P)
    gradient = theta.new_zeros(P)
    environment_sq = theta.new_zeros(())
    for phi, y in batches:
        E = model.environment(unit, phi)  # (B, C, P)
        r, K = loss.derivatives(E @ theta, y)  # f = E θ: (B, C)
        gradient += torch.einsum("ncq,nc->q", E, r)
        E_rows = E.reshape(-1, P)  # (B·C, P)
        environment_sq += E_rows.pow(2).sum()
        if isinstance(K, float):  # K_n = K·I
            hessian.addmm_(E_rows.T, E_rows, alpha=K)
        else:
            KE = torch.einsum("ncd,ndq->ncq", K, E).reshape(-1, P)
            hessian.addmm_(E_rows.T, KE)
    return hessian, gradient, environment_sq


def _pairs(n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Rows and columns of the n(n+1)/2 pairs i ≤ j, and the (n, n) map from (i, j) to its pair."""
    rows, cols = torch.triu_indices(n, n, device=device)
    index = torch.empty(n, n, dtype=torch.long, device=device)
    index[rows, cols] = index[cols, rows] = torch.arange(len(rows), device=device)
    return rows, cols, index


def _accumulate_kronecker(
    model: TensorNetwork, unit: Unit, loss: MSE, batches: Iterable[tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor, Tensor]:
    """`accumulate_system` for E_n = l_n ⊗ φ_n ⊗ r_n and a curvature K that is the same scalar for all n."""
    theta = model.core(unit)[:, :, 0, :]  # (Dl, p, Dr)
    Dl, p, Dr = theta.shape
    (l_rows, l_cols, l_index), (j_rows, j_cols, j_index), (r_rows, r_cols, r_index) = (
        _pairs(n, theta.device) for n in (Dl, p, Dr)
    )
    # packed[w, (u, v)] = Σ_n rr[n, w] · ll[n, u] · jj[n, v]: the distinct entries of Σ_n ll ⊗ φφ ⊗ rr
    packed = theta.new_zeros(len(r_rows), len(l_rows) * len(j_rows))
    chunk = max(1, PACKED_CHUNK_ENTRIES // packed.shape[1])
    gradient = torch.zeros_like(theta)  # (Dl, p, Dr)
    environment_sq = theta.new_zeros(())  # Σ_n ||l_n||² ||φ_n||² ||r_n||²
    curvature = 0.0
    for phi, y in batches:
        left, _, right = model.environment_factors(unit, phi)
        l, r = left[:, 0, :, 0], right[:, 0, :, 0]  # (B, Dl), (B, Dr)
        l_theta_r = ((l @ theta.reshape(Dl, -1)).reshape(-1, p, Dr) @ r[:, :, None])[:, :, 0]  # (B, p)
        f = (l_theta_r * phi).sum(dim=1, keepdim=True)  # (B, 1)
        residual, curvature = loss.derivatives(f, y)
        gradient += torch.einsum("na,nj,nb->ajb", l * residual, phi, r)
        environment_sq += (l.pow(2).sum(1) * phi.pow(2).sum(1) * r.pow(2).sum(1)).sum()
        ll = l[:, l_rows] * l[:, l_cols]  # (B, Dl(Dl+1)/2)
        jj = phi[:, j_rows] * phi[:, j_cols]  # (B, p(p+1)/2)
        rr = r[:, r_rows] * r[:, r_cols]  # (B, Dr(Dr+1)/2)
        for rows in range(0, len(phi), chunk):  # keeps the (rows, U·V) product cache-sized
            part = slice(rows, rows + chunk)
            packed.addmm_(rr[part].T, (ll[part, :, None] * jj[part, None, :]).reshape(-1, packed.shape[1]))
    # gram[(a, j, b), (a', j', b')] = packed[pair(b, b'), pair(a, a'), pair(j, j')]
    flat = (r_index[None, None, :, None, None, :] * len(l_rows) + l_index[:, None, None, :, None, None]) * len(
        j_rows
    ) + j_index[None, :, None, None, :, None]  # (Dl, p, Dr, Dl, p, Dr)
    P = theta.numel()
    hessian = curvature * packed.reshape(-1)[flat.reshape(-1)].reshape(P, P)
    return hessian, gradient.reshape(P), environment_sq
