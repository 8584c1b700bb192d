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

from ntn.hessians import DenseSystem, HeldRows, LowRankSystem, NewtonSystem, times, transposed_times, z_times
from ntn.losses import MSE, Loss
from ntn.models import INPUT, TOP, TensorNetwork, Unit, constant, fold_rows, multiset_places

# p^L × the largest core × C, a bound on the fold's intermediates (`TensorNetwork.folded_basis_environment`). 2^25
# lets MPO2 at L=5 bond 6 (19 M) take this path: on all rows of California housing 0.22 s/epoch against 0.70 s
# for the batches, peak RSS 452 MB (benchmarks/bench_floor.py, docs/benchmarks.md).
MAX_BASIS_ENTRIES = 2**25
# Columns per index (c·Dl·Dr) from which Z V over the monomials that hold each index beats Z V on all of them: the
# held products read p·M/S times more of Z (memory-bound when narrow). Measured at L = 3 and 5, p = 9: 6 and 16
# columns 0.7–0.9× (dense faster), 25 equal at L = 5, 36 0.5–0.7×.
HELD_MIN_WIDTH = 25


def monomial_count(L: int, p: int) -> int:
    """S = C(p + L − 1, L): the number of distinct entries of φ^{⊗L}."""
    return math.comb(p + L - 1, L)


def applies(model: TensorNetwork, loss: Loss, n_samples: int | None) -> bool:
    """Whether the moment form is exact (a quadratic loss: MSE), bounded in memory, and cheaper than a pass over the
    samples per update (measured in benchmarks/bench_ntn.py: so from N ≥ S on). n_samples None: for scores alone
    (validation data), whatever its size: a_cᵀ Z a_c per epoch, from the coefficients the training scores make,
    costs less than a pass over even 75 samples (L=3: 0.02 against 0.25 ms, benchmarks/bench_floor.py)."""
    basis = model.phys_dim**model.L
    largest = max(model.core(unit).numel() for unit in model.units) * model.output_dim
    enough = n_samples is None or monomial_count(model.L, model.phys_dim) <= n_samples
    return loss.quadratic and enough and basis * largest <= MAX_BASIS_ENTRIES


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
        self.n_monomials = S = len(self.monomials)
        self.Z = torch.zeros(S, S, dtype=dtype, device=device)
        self.Z_y = torch.zeros(S, model.output_dim, dtype=dtype, device=device)
        y_sum = torch.zeros(model.output_dim, dtype=dtype, device=device)  # Σ_n y_n (C,)
        y_sq_sum = torch.zeros(model.output_dim, dtype=dtype, device=device)  # Σ_n y_n² (C,)
        self.n_samples = 0
        for phi, y in batches:
            z = phi[:, self.monomials].prod(dim=2)  # (B, S)
            self.Z.addmm_(z.T, z)
            self.Z_y.addmm_(z.T, y)
            y_sum += y.sum(dim=0)
            y_sq_sum += y.pow(2).sum(dim=0)
            self.n_samples += len(y)
        self.y_sq_total = y_sq_sum.sum().item()  # Σ_n ||y_n||²
        self.y_variation = (y_sq_sum - y_sum.pow(2) / self.n_samples).sum().item()  # Σ_n ||y_n − ȳ||²
        self.monomial_of = multiset_places(L, p, device)[0]  # the monomial of each basis tuple (row-major), (p^L,)
        # holding[j] = the monomials that hold index j, as many (M) for every j: (p, M); Z's columns for them (p, S, M)
        holds = (self.monomials[:, :, None] == torch.arange(p, device=device)).any(dim=1)  # (S, p)
        self.holding = holds.T.nonzero()[:, 1].reshape(p, -1)
        self._folds: dict[tuple[int, bool], tuple] = {}  # (site, sorted only): `_fold_places`
        self._scatters: dict[int, Tensor] = {}  # outputs per block: `_held_gram`'s places
        self._scaled_sums: dict[tuple[float, int], tuple[Tensor, Tensor, Tensor]] = {}  # `_scaled`

    def system(self, model: TensorNetwork, unit: Unit, loss: MSE) -> tuple[NewtonSystem, Tensor, Tensor | HeldRows]:
        """The same sums as `gram.accumulate_system`, as a Newton system (H = Σ_n E_nᵀ K E_n, b = H θ − g: for MSE
        Σ_n E_nᵀ K y_n, whatever θ), trace(H) = K Σ_n ||E_n||²_F (0-d), and V (blocks, R, P') or V on its held rows
        (`coefficients_of`).

        With E_n = V z_n, V (R, P) per block (rows (monomial, c)), H = Vᵀ (K Z̃) V and b = Vᵀ (K Z_y). H's rank is ≤ R;
        where that is below P it is kept factored (`LowRankSystem`), so that neither forming it nor solving with it
        costs O(P³)."""
        C, S = model.output_dim, self.n_monomials
        if model.reads_phi(unit):
            V, order = self._held_environment(model, unit)
        else:  # one block, rows (monomial, c)
            V = model.folded_basis_environment(unit, self.monomials, self.monomial_of).reshape(1, S * C, -1)
            order = None
        blocks = 1 if order is None else order[0].shape[0]
        R, P_block = S * C // blocks, model.core(unit).numel() // blocks  # rows (monomial, c), parameters per block
        Z, Z_holding, Z_y = self._scaled(loss.curvature(C), blocks)  # K Z, its held columns, K Z_y
        if R < P_block:
            G = self._held_gram(V) if isinstance(V, HeldRows) else torch.bmm(V, V.transpose(1, 2))  # (blocks, R, R)
            system = LowRankSystem(V, Z, G, Z_y, order)
            return system, system.trace(), V
        if not isinstance(V, HeldRows):
            H = torch.bmm(V.transpose(1, 2), z_times(Z, V))  # (blocks, P', P')
        else:  # Vᵀ Z V over each j's held rows: (blocks, p_j, M, c, X) with B = Z V on them
            V_held = V.V_held
            B = Z_holding @ V_held.flatten(3)  # (blocks, p_J, S, c·X)
            B_held = B.index_select(2, self.holding.flatten())  # (blocks, p_J, p_j·M, c·X)
            B_held = B_held.reshape(*B.shape[:2], *V_held.shape[1:])  # (blocks, p_J, p_j, M, c, X)
            H = torch.einsum("bjhcx,bJjhcy->bjxJy", V_held, B_held).reshape(blocks, P_block, P_block)
        return DenseSystem(H, transposed_times(V, Z_y), order), H.diagonal(dim1=1, dim2=2).sum(), V

    def _scaled(self, K: float, blocks: int) -> tuple[Tensor, Tensor, Tensor]:
        """K Z, its columns for each index's held monomials (p, S, M) and K Z_y as (blocks, R, 1) (rows (monomial, c)
        of each block's outputs): the sums in the units of the Hessian H = K Vᵀ Z̃ V of a loss of curvature K; made
        once per K and block count."""
        if (K, blocks) not in self._scaled_sums:
            S, C = self.Z_y.shape
            Z = K * self.Z
            per_block = (K * self.Z_y).reshape(S, blocks, C // blocks).transpose(0, 1)  # (blocks, S, c)
            Z_holding = Z[:, self.holding].permute(1, 0, 2).contiguous()
            self._scaled_sums[K, blocks] = (Z, Z_holding, per_block.reshape(blocks, -1, 1))
        return self._scaled_sums[K, blocks]

    def _held_environment(self, model: TensorNetwork, unit: Unit) -> tuple[Tensor | HeldRows, tuple]:
        """For a core that reads φ's index j (`TensorNetwork.reads_phi`), (Dl, p, C_k, Dr) (an input core (s, i, j, u)
        as (dl, p, 1, r·dr)): its V in the parameter order (c_k, j, a, b), one block per output the core carries (its
        Hessian is block diagonal in c_k), and (`order` (blocks, P') of those parameters in the core, its inverse
        (P,)). V[m, c, (j, a, b)] = 0 unless monomial m holds j, so where that saves time (`HELD_MIN_WIDTH`, or a
        low-rank system) V is given on the M monomials that hold each j alone (`holding`): (`HeldRows` of V_held
        (blocks, p, M, c, X), order), X = Dl·Dr, and the products run over those rows alone; else (V (blocks, R, P'),
        order).

        The core's environment depends on a basis tuple t through its pair (x, y) = (t_<k, t_>k) alone: on the pairs,
        `pairs` (p^(L-1), C·X) is the top row's prefix[x, c, a] · suffix[y, c, b] (`TensorNetwork.top_row_pairs`) or
        an input core's environment there (`TensorNetwork.input_pairs`). V[m, j] sums it over the tuples t of m with
        t_k = j: over all of them (MPO2, LMPO2), that is over the orderings of the multiset q = m − {j} into (x, y),
        `symmetric`[q] whatever j (one sum into the M multisets of L − 1 indices, then a gather; an input core's sum
        comes from the model, `TensorNetwork.input_multisets`, which at a chain's end never forms the pairs); behind
        MMPO2's mask, over m's sorted tuple alone, where its k-th index is j (a gather). On the held rows the former
        needs no gather: the monomials that hold j, in their order (`holding`), are the multisets m − {j} in theirs
        (adding j to sorted tuples keeps their order), so every j's held rows are the M multisets themselves (a view
        that repeats them)."""
        core, C, S, site = model.core(unit), model.output_dim, self.n_monomials, unit.site
        Dl, p, blocks, Dr = core.shape if unit.layer == TOP else (*core.shape[:2], 1, core.shape[2] * core.shape[3])
        per_block, X = C // blocks, Dl * Dr
        held = per_block * X >= HELD_MIN_WIDTH or S * per_block < p * X  # wide, or low rank
        order = _block_order((Dl, p, blocks, Dr), core.device)
        sorted_only = model.masked(unit)
        if (site, sorted_only) not in self._folds:
            self._folds[site, sorted_only] = self._fold_places(model.L, p, site, sorted_only)
        multiset, held_rows, rows = self._folds[site, sorted_only]
        if multiset is None:  # behind the mask: the pairs themselves, and a row of zeros
            source = torch.nn.functional.pad(model.top_row_pairs(site), (0, 0, 0, 1))
        elif unit.layer == INPUT:  # `symmetric` from the model, a row of zeros where `rows` reads it
            symmetric = model.input_multisets(unit)  # (M, C·X)
            source = symmetric if held else torch.nn.functional.pad(symmetric, (0, 0, 0, 1))
        else:  # `symmetric` of the top row's pairs (`TensorNetwork.top_row_pairs`, (p^(L-1), C·X)), a row of zeros
            source = fold_rows(model.top_row_pairs(site), multiset, self.holding.shape[1] + 1)  # row M: none's
            symmetric = source[:-1]
        # gathers of whole rows (index_select: 2-3× faster than indexing by a 2-d tensor); the permutes are views for
        # one output
        if held:  # rows (j, h)
            if multiset is None:
                V_held = source.index_select(0, held_rows).reshape(p, -1, blocks, per_block, X)
            else:  # the multisets, for every j
                V_held = symmetric.reshape(1, -1, blocks, per_block, X).expand(p, -1, -1, -1, -1)
            return HeldRows(V_held.permute(2, 0, 1, 3, 4), self.holding, S, shared=multiset is not None), order
        V = source.index_select(0, rows).reshape(S, p, blocks, per_block, X).permute(2, 0, 3, 1, 4)
        return V.reshape(blocks, S * per_block, -1), order  # (blocks, (m, c), (j, X))

    def _fold_places(self, L: int, p: int, site: int, sorted_only: bool) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """Where `_held_environment` takes V from at site k: the multiset of L − 1 indices of each (prefix, suffix)
        pair (p^(L-1),), as its place among the M monomials of degree L − 1 (None behind the mask), and the row of
        `source` (multisets or pairs, then a row of zeros) of each held (j, h), (p·M,) (behind the mask alone: else
        they are the multisets in order, None), and of each (m, j), (S·p,)."""
        device = self.monomials.device
        monomials = self.monomials.tolist()
        multiset, numbers = multiset_places(L - 1, p, device)  # the multiset of each (x, y), base-p order; theirs
        place = multiset.tolist()
        zero = p ** (L - 1) if sorted_only else len(numbers)  # the row of zeros: after the pairs, or the M multisets

        def number(rest: list[int]) -> int:  # a tuple of L − 1 indices in base p: its pair's row
            return sum(i * p**n for n, i in enumerate(reversed(rest)))

        def source_row(m: int, j: int) -> int:
            indices = monomials[m]
            if sorted_only:  # m's sorted tuple, where its k-th index is j: its pair
                return number(indices[:site] + indices[site + 1 :]) if indices[site] == j else zero
            if j not in indices:
                return zero
            rest = list(indices)
            rest.remove(j)
            return place[number(rest)]  # the multiset m − {j}

        rows = torch.tensor([[source_row(m, j) for j in range(p)] for m in range(len(monomials))], device=device)
        if not sorted_only:
            return multiset, None, rows.flatten()
        held_rows = [[source_row(m, j) for m in row] for j, row in enumerate(self.holding.tolist())]
        return None, torch.tensor(held_rows, device=device).flatten(), rows.flatten()

    def _held_gram(self, V: HeldRows) -> Tensor:
        """G = V Vᵀ (blocks, R, R) from V on each j's held rows (blocks, p, M, c, X): the products of the rows
        that hold j, summed into their places; where every j's held rows are the same (`HeldRows.shared`), their
        products are made once: (M·c)²·X multiplications, not p times as many."""
        V_held, shared = V.V_held, V.shared
        blocks, p, M, per_block, X = V_held.shape
        R = self.n_monomials * per_block
        if per_block not in self._scatters:  # flat place in (R, R) of (j, (h, c), (h', c'))
            row = (self.holding[:, :, None] * per_block + torch.arange(per_block, device=V_held.device)).flatten(1)
            self._scatters[per_block] = (row[:, :, None] * R + row[:, None, :]).reshape(-1)
        V_rows = V.shared_rows if shared else V_held.reshape(-1, M * per_block, X)  # (blocks·(1 or p), M·c, X)
        products = torch.bmm(V_rows, V_rows.transpose(1, 2)).reshape(blocks, -1)  # (blocks, (1 or p)·(M·c)²)
        products = products.repeat(1, p) if shared else products  # each j's
        G = fold_rows(products, self._scatters[per_block], R * R, dim=1)
        return G.reshape(blocks, R, R)

    def coefficients(self, model: TensorNetwork) -> Tensor:
        """a (S, C): f_c(x) = Σ_m a[m, c] z_m(x), the model's coefficient of each monomial (the same for every data
        set of this shape: computed once per epoch for the training and validation scores)."""
        W = model.dense().reshape(-1, model.output_dim)  # f on every basis tuple: (p^L, C)
        return fold_rows(W, self.monomial_of, self.n_monomials)

    def coefficients_of(self, V: Tensor | HeldRows, theta: Tensor) -> Tensor:
        """`coefficients` from one core's V (blocks, R, P') or V on its held rows (`system`) and the core in its
        system's blocks (blocks, P'): f = E_n θ = (V θ)ᵀ z_n, so a = V θ, rows (monomial, c) of each block's outputs."""
        rows = times(V, theta[:, :, None])  # (blocks, R, 1)
        return rows.reshape(rows.shape[0], self.n_monomials, -1).transpose(0, 1).reshape(self.n_monomials, -1)

    def scores(self, model: TensorNetwork, coefficients: Tensor | None = None) -> dict[str, float]:
        """{"loss", "r2"} of the model on this data set, as `NTN.evaluate` defines them, from the sums:
        Σ_n ||f_n − y_n||² = Σ_c a_cᵀ (Z a_c − 2 Z_y[:, c]) + Σ_n ||y_n||²; one device sync."""
        a = self.coefficients(model) if coefficients is None else coefficients
        residual = torch.addmm(self.Z_y, self.Z, a, beta=-2).flatten().dot(a.flatten()).item() + self.y_sq_total
        total = self.y_variation
        r2 = 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else -math.inf)
        return {"loss": residual / (self.n_samples * model.output_dim), "r2": r2}


@constant(maxsize=64)
def _block_order(shape: tuple[int, int, int, int], device: torch.device) -> tuple[Tensor, Tensor]:
    """For a core (Dl, p, C_k, Dr): order[c, (j, a, b)] = the flat core index of (a, j, c, b), (C_k, p·Dl·Dr),
    and its inverse (P,)."""
    Dl, p, C_k, Dr = shape
    order = torch.arange(Dl * p * C_k * Dr, device=device).reshape(Dl, p, C_k, Dr).permute(2, 1, 0, 3).reshape(C_k, -1)
    return order, torch.argsort(order.reshape(-1))
