"""A core's MSE Newton system from the training data's polynomial moments, at a cost independent of N.

Every site reads the same φ(x) (p entries), so f is linear in Φ(x) = φ(x)^{⊗L}, and for any core the
environment is E_n = W Φ_n, where W is the rest of the network evaluated on basis vectors. Φ_n has only
S = C(p+L−1, L) distinct entries, the degree-L monomials z_n of φ_n (φ carries a 1, so they hold every
monomial of degree ≤ L in x). Folding W onto them gives V (C, S, P) with E_n[c] = V_cᵀ z_n, and

    Σ_n E_nᵀ E_n = Σ_c V_cᵀ Z V_c,        Σ_n E_nᵀ y_n = Σ_c V_cᵀ Z_y[:, c],
    Z = Σ_n z_n z_nᵀ (S, S),              Z_y = Σ_n z_n y_nᵀ (S, C).

Z and Z_y are accumulated once, over mini-batches. After that a core's system costs 2·C·P·S·(S + P)
flops whatever N is (p = 9, L = 3: S = 165, against Σ_n over 16k samples of a P² outer product).
For MPO2's and MMPO2's top cores V is 0 outside the M = S − C(p+L−2, L) monomials that hold each index, so
Z V and Vᵀ B run over those rows alone (L = 3: M/S = 45/165).

The training figures follow from the same sums: with a_c (S,) the coefficients of f_c on the monomials,
Σ_n (f_nc − y_nc)² = a_cᵀ Z a_c − 2 a_cᵀ Z_y[:, c] + Σ_n y_nc², so an epoch's loss and R² on the training
set cost no pass over it either.

Only floating-point products are used: CUDA has no integer matrix product, so index arithmetic is
written as sums of elementwise products.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from ntn.losses import MSE, Loss
from ntn.models import TensorNetwork, Unit, basis_tuples

# p^L × the largest core × C, a bound on the fold's intermediates (`TensorNetwork.folded_basis_environment`). 2^25
# lets MPO2 at L=5 bond 6 (19 M) take this path: on all rows of California housing 0.22 s/epoch against 0.70 s
# for the batches, peak RSS 452 MB (benchmarks/bench_floor.py, docs/benchmarks.md).
MAX_BASIS_ENTRIES = 2**25


def monomial_count(L: int, p: int) -> int:
    """S = C(p + L − 1, L): the number of distinct entries of φ^{⊗L}."""
    return math.comb(p + L - 1, L)


def applies(model: TensorNetwork, loss: Loss, n_samples: int) -> bool:
    """Whether the moment form is exact (a quadratic loss: MSE), bounded in memory, and cheaper than a pass over the
    samples (measured in benchmarks/bench_ntn.py: so from N ≥ S on)."""
    basis = model.phys_dim**model.L
    largest = max(model.core(unit).numel() for unit in model.units) * model.output_dim
    return (
        loss.quadratic and monomial_count(model.L, model.phys_dim) <= n_samples and basis * largest <= MAX_BASIS_ENTRIES
    )


class LowRankHessian:
    """H = s · Vᵀ B (P, P) for factors V, B (R, P) with R < P and a scalar s, kept factored.

    (H + μI)⁻¹ r = (r − Vᵀ (μ/s · I_R + B Vᵀ)⁻¹ B r) / μ, by the push-through identity
    (μI_P + Vᵀ B)⁻¹ Vᵀ = Vᵀ (μI_R + B Vᵀ)⁻¹: an R × R solve in place of a P × P factorisation.
    """

    def __init__(self, V: Tensor, B: Tensor, scale: float = 1.0) -> None:
        self.V, self.B, self.scale = V, B, scale

    def __truediv__(self, divisor: float) -> LowRankHessian:
        return LowRankHessian(self.V, self.B, self.scale / divisor)

    def diagonal(self) -> Tensor:
        return (self.V * self.B).sum(dim=0) * self.scale

    def dense(self) -> Tensor:
        return self.scale * (self.V.T @ self.B)

    def solve(self, shift: float, rhs: Tensor) -> Tensor | None:
        """(H + shift·I)⁻¹ rhs, or None where that system is singular."""
        if shift <= 0:
            return None
        small = self.B @ self.V.T  # (R, R)
        small.diagonal().add_(shift / self.scale)
        inner, info = torch.linalg.solve_ex(small, (self.B @ rhs)[:, None])
        return (rhs - self.V.T @ inner[:, 0]) / shift if info.item() == 0 else None


RECENT = 4  # data sets whose moments are kept: an experiment's seeds, a sweep worker's runs, train on the same few


def of(model: TensorNetwork, X: Tensor, y: Tensor, batches: Callable[[], Iterable[tuple[Tensor, Tensor]]]) -> Moments:
    """The moments of (X, y) for the model's shape, from `batches()` or, for the same data and shape as one of
    the RECENT ones, made before (in this process or before it forked). Keyed by the data's content, so
    data changed in place since is never matched (measured: 26 ms of a 160 ms seed, all rows bond 12)."""
    key = (model.L, model.phys_dim, model.output_dim, X.device, _digest(X), _digest(y))  # digests: shape, dtype, bytes
    if key not in _recent:
        _recent[key] = Moments(model, batches())
        while len(_recent) > RECENT:
            _recent.popitem(last=False)
    _recent.move_to_end(key)
    return _recent[key]


_recent: OrderedDict[tuple, Moments] = OrderedDict()


def _digest(data: Tensor) -> tuple:
    content = data.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()  # any dtype, as bytes
    return data.shape, data.dtype, hashlib.blake2b(content, digest_size=16).digest()


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
        self.y_sum = torch.zeros(model.output_dim, dtype=dtype, device=device)  # Σ_n y_n (C,)
        self.y_sq_sum = torch.zeros(model.output_dim, dtype=dtype, device=device)  # Σ_n y_n² (C,)
        self.n_samples = 0
        for phi, y in batches:
            z = phi[:, self.monomials].prod(dim=2)  # (B, S)
            self.Z.addmm_(z.T, z)
            self.Z_y.addmm_(z.T, y)
            self.y_sum += y.sum(dim=0)
            self.y_sq_sum += y.pow(2).sum(dim=0)
            self.n_samples += len(y)
        # monomial_of[t] = the monomial of basis tuple t (row-major): its sorted tuple, found by its base-p number
        powers = p ** torch.arange(L - 1, -1, -1, device=device)  # (L,)
        lookup = torch.empty(p**L, dtype=torch.long, device=device)
        lookup[(self.monomials * powers).sum(dim=1)] = torch.arange(S, device=device)
        self.monomial_of = lookup[(basis_tuples(L, p, device).sort(dim=1).values * powers).sum(dim=1)]  # (p^L,)
        # holding[j] = the monomials that hold index j, as many for every j: (p, M); Z's columns for them (p, S, M)
        holds = (self.monomials[:, :, None] == torch.arange(p, device=device)).any(dim=1)  # (S, p)
        self.holding = holds.T.nonzero()[:, 1].reshape(p, -1)
        self.Z_holding = self.Z[:, self.holding].permute(1, 0, 2).contiguous()

    def system(self, model: TensorNetwork, unit: Unit, loss: MSE) -> tuple[Tensor | LowRankHessian, Tensor, float]:
        """The same sums as `gram.accumulate_system`: (Σ_n E_nᵀ K E_n (P, P), Σ_n E_nᵀ r_n (P,), Σ_n ||E_n||²_F).

        The Hessian Σ_c V_cᵀ (K Z) V_c has rank ≤ C·S; where that is below P it is returned in that
        factored form (`LowRankHessian`), so that neither forming it nor solving with it costs O(P³)."""
        theta = model.core(unit).reshape(-1)  # (P,)
        V = model.folded_basis_environment(unit, self.monomials, self.monomial_of)  # E_n = V z_n: (C, S, P)
        C, S, P = V.shape
        K = loss.curvature(C)  # r_n = K (E_n θ − y_n)
        V_rows = V.reshape(C * S, P)
        if model.reads_phi(unit):  # V[:, m, :, j] = 0 unless monomial m holds j: Z V and Vᵀ B over those rows alone
            Dl, p = model.core(unit).shape[:2]
            V_by_j = V.reshape(C, S, Dl, p, -1).permute(3, 0, 1, 2, 4)  # (p, C, S, Dl, Y): Y = C_k·Dr
            rows = self.holding[:, None, :, None, None].expand(-1, C, -1, *V_by_j.shape[3:])
            V_held = V_by_j.gather(2, rows).flatten(3)  # (p, C, M, Dl·Y): V[c, holding[j], :, j]
            B_by_j = self.Z_holding[:, None] @ V_held  # (p, C, S, Dl·Y)
            B = B_by_j.unflatten(3, (Dl, -1)).permute(1, 2, 3, 0, 4).reshape(C * S, P).mul_(K)
        else:
            B = torch.matmul(self.Z, V).reshape(C * S, P).mul_(K)  # (C·S, P): the Hessian is V_rowsᵀ B
        Ey = torch.einsum("csq,sc->q", V, self.Z_y)  # Σ_n E_nᵀ y_n
        gradient = V_rows.T @ (B @ theta) - K * Ey
        environment_sq = torch.dot(V_rows.reshape(-1), B.reshape(-1)).item() / K  # trace of Σ_c V_cᵀ Z V_c
        if C * S < P:
            hessian = LowRankHessian(V_rows, B)
        elif model.reads_phi(unit):  # H[(a, j, y), :] = Σ_c Σ_{m holding j} V[c, m, a, j, y] B[c, m, :]
            B_held = B.reshape(C, S, P)[:, self.holding]  # (C, p, M, P)
            H_by_j = torch.einsum("jcmx,cjmq->jxq", V_held, B_held)  # (p, Dl·Y, P)
            hessian = H_by_j.unflatten(1, (Dl, -1)).transpose(0, 1).reshape(P, P)
        else:
            hessian = V_rows.T @ B
        return hessian, gradient, environment_sq

    def scores(self, model: TensorNetwork) -> dict[str, float]:
        """{"loss", "r2"} of the model on the training set, as `NTN.evaluate` defines them, from the sums."""
        W = model.dense().reshape(-1, model.output_dim)  # f on every basis tuple: (p^L, C)
        a = W.new_zeros(len(self.monomials), W.shape[1]).index_add_(0, self.monomial_of, W)  # (S, C)
        residual = ((self.Z @ a) * a).sum() - 2 * (a * self.Z_y).sum() + self.y_sq_sum.sum()
        total = (self.y_sq_sum - self.y_sum.pow(2) / self.n_samples).sum()
        residual, total = residual.item(), total.item()
        r2 = 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else -math.inf)
        return {"loss": residual / (self.n_samples * model.output_dim), "r2": r2}
