"""Tensor-network regression and classification models: MPO2, LMPO2 and MMPO2.

All three are the same two-row ladder, evaluated on φ(x) = [x, 1] at every one of the L sites:

    top row     A_0 ── A_1 ── … ── A_{L-1}        trainable tensor train, output index c on `output_site`
                 │      │            │   j_k      (size r)
    input row   B_0 ── B_1 ── … ── B_{L-1}        per-site input layer
                 │      │            │   i_k      (size p = n_features + 1), contracted with φ(x)

    f(x)_c = Σ A_0[j_0] … A_{L-1}[j_{L-1}] · Ψ(x)[j_0, …, j_{L-1}],
    Ψ(x)[j] = Σ_i B_0[i_0, j_0] … B_{L-1}[i_{L-1}, j_{L-1}] · φ(x)_{i_0} … φ(x)_{i_{L-1}}.

The models differ only in the input row:
- MPO2:  none (B_k = identity, r = p), so f is a polynomial of degree ≤ L in x stored as a tensor train.
- LMPO2: a trainable MPO with bond `bond_dim` that reduces p to `rank` at every site.
- MMPO2: a fixed MPO that masks Ψ to the index tuples i_0 ≤ i_1 ≤ … ≤ i_{L-1}, so each monomial
  appears once.

Core shapes (D = bond_dim, bonds at the chain ends have size 1, C = output_dim):
    top core k      (D_left, r, C_k, D_right)   C_k = C on `output_site`, 1 elsewhere
    input core k    (d_left, p, r, d_right)
Because f is linear in every core, `environment(unit, phi)` returns the matrix E with
f(x)[c] = Σ_q E[n, c, q] · vec(core)[q]; the trainer's Newton step needs nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

TOP, INPUT = "top", "input"
T = TypeVar("T")


@dataclass
class InputLayer:
    """The input row: one core per site, (d_left, p, r, d_right), and whether the trainer updates it."""

    cores: list[Tensor]
    trainable: bool
    sorted_only: bool = False  # the cores are MMPO2's mask: 1 on index tuples i_0 ≤ … ≤ i_{L-1}, 0 elsewhere


@dataclass(frozen=True)
class Unit:
    """One trainable core: its row (`"top"` or `"input"`) and its site."""

    layer: str
    site: int


def _check(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _bond_dims(L: int, bond_dim: int) -> list[int]:
    """Sizes of the L + 1 bonds of an open chain: 1 at both ends, bond_dim inside."""
    return [1] + [bond_dim] * (L - 1) + [1]


class TensorNetwork:
    """The ladder described in the module docstring. Use MPO2, LMPO2 or MMPO2 to build one."""

    def __init__(
        self,
        *,
        L: int,
        bond_dim: int,
        phys_dim: int,
        output_dim: int,
        output_site: int,
        init_strength: float,
        input_layer: InputLayer | None,
        seed: int | None,
    ) -> None:
        _check("L", L, 2)
        _check("bond_dim", bond_dim, 1)
        _check("phys_dim", phys_dim, 2)
        _check("output_dim", output_dim, 1)
        if not isinstance(output_site, int) or not 0 <= output_site < L:
            raise ValueError(f"output_site must be an integer in [0, {L}), got {output_site!r}")
        if not init_strength > 0:
            raise ValueError(f"init_strength must be > 0, got {init_strength!r}")
        self.recipe: dict[str, Any] = {}  # the factory and its arguments (set by MPO2, LMPO2, MMPO2): see saving.py
        self.L, self.bond_dim, self.phys_dim = L, bond_dim, phys_dim
        self.output_dim, self.output_site = output_dim, output_site
        self.input_cores = None if input_layer is None else input_layer.cores  # None: φ feeds the top row
        self.train_input = input_layer is not None and input_layer.trainable
        self._kept_columns: dict[int, tuple] = {}  # site: (its cores and their versions, its column): `_basis_column`
        self._kept_sides: dict[int, tuple] = {}  # site: (the other sites' cores versioned, left, right): `_basis_sides`
        self._kept_multiset_sides: dict[int, tuple] = {}  # chain end: (its side, summed per multiset): `_multiset_side`
        self.sorted_only = input_layer is not None and input_layer.sorted_only
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        r = phys_dim if self.input_cores is None else self.input_cores[0].shape[2]
        D = _bond_dims(L, bond_dim)
        self.top_cores = [
            init_strength
            * torch.randn(
                D[k],
                r,
                output_dim if k == output_site else 1,
                D[k + 1],
                generator=generator,
                dtype=torch.float64,
            )
            for k in range(L)
        ]

    # ---- parameters -------------------------------------------------------------------------

    @property
    def units(self) -> list[Unit]:
        """Trainable cores in left-to-right order (top before input at each site)."""
        layers = (TOP, INPUT) if self.train_input else (TOP,)
        return [Unit(layer, k) for k in range(self.L) for layer in layers]

    def core(self, unit: Unit) -> Tensor:
        return (self.top_cores if unit.layer == TOP else self.input_cores)[unit.site]

    def set_core(self, unit: Unit, value: Tensor) -> None:
        (self.top_cores if unit.layer == TOP else self.input_cores)[unit.site] = value

    @property
    def trainable_cores(self) -> list[Tensor]:
        return [self.core(u) for u in self.units]

    @property
    def n_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(c.numel() for c in self.trainable_cores)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> TensorNetwork:
        """The cores on `device` as `dtype`, normal tensors (`make_cores_normal`) whatever mode made them."""
        self.top_cores = [c.to(device, dtype) for c in self.top_cores]
        if self.input_cores is not None:
            self.input_cores = [c.to(device, dtype) for c in self.input_cores]
        self.make_cores_normal()
        return self

    def make_cores_normal(self) -> dict[int, Tensor]:
        """Replace every core that is an inference tensor (a sweep in `NTN.fit` makes them) by a normal copy: the
        caller may change it in place or use autograd with it, and torch counts its changes (`versions`). The tables
        kept for the old cores stay kept for their copies (the same values).

        :return: {id(old core): its copy}, for other tables kept for the old cores (`restamped`)
        """
        old = self.top_cores + (self.input_cores or [])  # alive while their ids are keys
        with torch.inference_mode(False):
            copies = {id(core): core.clone() for core in old if core.is_inference()}
        if copies:
            self.top_cores = [copies.get(id(core), core) for core in self.top_cores]
            if self.input_cores is not None:
                self.input_cores = [copies.get(id(core), core) for core in self.input_cores]
            for kept in (self._kept_columns, self._kept_sides):
                for site, (stamp, *tables) in kept.items():
                    kept[site] = (restamped(stamp, copies), *tables)
        return copies

    def state(self) -> list[Tensor]:
        """A copy of every core (trainable or not), for `load_state`."""
        return [c.clone() for c in self.top_cores + (self.input_cores or [])]

    def load_state(self, state: list[Tensor]) -> None:
        with torch.inference_mode(False):  # normal tensors, even under inference mode: usable with autograd
            self.top_cores = [c.clone() for c in state[: self.L]]
            if self.input_cores is not None:
                self.input_cores = [c.clone() for c in state[self.L :]]

    def norm_sq(self) -> float:
        """Σ over the trainable rows of ||T||²_F, T the row's whole tensor (the contraction of its cores).
        A row is a tensor train, so this is its transfer-matrix product: no p^L tensor is formed."""
        rows = [self.top_cores, self.input_cores] if self.train_input else [self.top_cores]
        total = None
        for row in rows:
            first = row[0].reshape(-1, row[0].shape[-1])  # (phys, b): the first core's left bond is 1
            env = first.T @ first  # (b, b'): the cores so far contracted with themselves, symmetric
            for core in row[1:]:
                M = core.reshape(core.shape[0], -1, core.shape[-1])  # (a, phys, b)
                half = (env @ M.flatten(1)).reshape(-1, M.shape[2])  # Σ_a env[c, a] M[a, p, b]: ((c, p), b)
                env = half.T @ M.reshape(-1, M.shape[2])  # Σ_{c, p} half[(c, p), b] M[c, p, d]
            total = env.sum() if total is None else total + env.sum()
        return float(total)

    # ---- contraction ------------------------------------------------------------------------

    @staticmethod
    def _at(phi: Tensor, site: int) -> Tensor:
        """The input vectors read at `site`: φ (B, p) is read at every site; (B, L, p) gives each its own."""
        return phi if phi.ndim == 2 else phi[:, site]

    def _input(self, site: int, phi: Tensor) -> Tensor:
        """Input row at `site` contracted with its input: (B, d_left, r, d_right)."""
        phi = self._at(phi, site)
        if self.input_cores is None:
            return phi[:, None, :, None]
        return torch.einsum("ni,sijt->nsjt", phi, self.input_cores[site])

    def _column(self, site: int, phi: Tensor) -> Tensor:
        """The ladder column at `site`: (B, C_k, D_left·d_left, D_right·d_right)."""
        col = torch.einsum("ajcb,nsjt->ncasbt", self.top_cores[site], self._input(site, phi))
        B, C, a, s, b, t = col.shape
        return col.reshape(B, C, a * s, b * t)

    def _left(self, phi: Tensor, site: int) -> Tensor:
        """Contraction of the columns left of `site`: (B, C or 1, 1, D_left·d_left)."""
        env = phi.new_ones(phi.shape[0], 1, 1, 1)
        for k in range(site):
            env = env @ self._column(k, phi)
        return env

    def _right(self, phi: Tensor, site: int) -> Tensor:
        """Contraction of the columns right of `site`: (B, C or 1, D_right·d_right, 1)."""
        env = phi.new_ones(phi.shape[0], 1, 1, 1)
        for k in reversed(range(site + 1, self.L)):
            env = self._column(k, phi) @ env
        return env

    def __call__(self, phi: Tensor) -> Tensor:
        """f(x) for a batch of embedded inputs φ(x): (B, p) -> (B, C). φ may also be (B, L, p), one
        input per site (f is linear in each site's input)."""
        if self.sorted_only:
            return self._sorted_sum(phi)
        return self._left(phi, self.L)[:, :, 0, 0]

    def _sorted_sum(self, phi: Tensor) -> Tensor:
        """f behind MMPO2's mask, through its structure: the top row summed over the index tuples
        i_0 ≤ … ≤ i_{L-1} alone, carried per sample by the last index j; (B, C)."""
        carried = phi.new_ones(phi.shape[0], 1, 1, self.phys_dim)  # (B, c, bond, j): s = 0 lets every j pass
        for k, top in enumerate(self.top_cores):  # (Dl, p, C_k, Dr)
            allowed = carried.cumsum(dim=3) if k else carried  # Σ over the tuples so far ending in s ≤ j
            carried = torch.einsum("ncaj,ajcb,nj->ncbj", allowed, top, self._at(phi, k))
        return carried.sum(dim=3)[:, :, 0]

    def _left_factor(self, site: int, phi: Tensor) -> Tensor:
        """Everything left of the top core at `site`, output index expanded: (B, C, D_left, d_left)."""
        d_left = 1 if self.input_cores is None else self.input_cores[site].shape[0]
        left = self._left(phi, site).reshape(phi.shape[0], -1, self.top_cores[site].shape[0], d_left)
        return left.expand(-1, self.output_dim, -1, -1)

    def _right_factor(self, site: int, phi: Tensor) -> Tensor:
        """Everything right of the top core at `site`, output index expanded: (B, C, D_right, d_right)."""
        d_right = 1 if self.input_cores is None else self.input_cores[site].shape[3]
        right = self._right(phi, site).reshape(phi.shape[0], -1, self.top_cores[site].shape[3], d_right)
        return right.expand(-1, self.output_dim, -1, -1)

    def environment_factors(self, unit: Unit, phi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The pieces around the top core at `unit.site`, each with the output index c expanded:
        left (B, C, D_left, d_left), input row (B, d_left, r, d_right), right (B, C, D_right, d_right).
        """
        k = unit.site
        return self._left_factor(k, phi), self._input(k, phi), self._right_factor(k, phi)

    def environment(self, unit: Unit, phi: Tensor) -> Tensor:
        """E with f(x)[n, c] = Σ_q E[n, c, q] · vec(core(unit))[q]: (B, C, numel(core)).

        :param phi: φ(x) (B, p), or one input per site (B, L, p)
        """
        return self._assemble(unit, *self.environment_factors(unit, phi), self._at(phi, unit.site))

    def top_row_pairs(self, site: int) -> Tensor:
        """The top row alone, its cores reading basis vectors e_i, contracted around the core at `site` on every pair
        (x, y) of a prefix x = (i_0, …, i_{k-1}) and a suffix y = (i_{k+1}, …): (p^(L-1), C·D_left·D_right), rows
        (x, y) in row-major order, columns (c, a, b), prefix[x, c, a] · suffix[y, c, b] (`_prefix_rows`,
        `_suffix_rows`); at a chain's end the other side's rows alone. For MPO2 that is the network; behind MMPO2's
        mask, the network on sorted tuples."""
        C, L = self.output_dim, self.L
        if site == 0:  # the suffix as carried, (c, b, y), transposed: a view, that the fold or pad reads in place
            suffix = _suffix_columns(self.top_cores[1:])
            return suffix.expand(C, -1, -1).reshape(-1, suffix.shape[2]).mT
        prefix = _prefix_rows(self.top_cores[:site]).expand(-1, C, -1)  # (p^k, C, D_left)
        if site == L - 1:
            return prefix.reshape(prefix.shape[0], -1)
        # the suffix in memory order, so that the product is too and its reshape a view (from the carried form, a
        # permuted view, the product took its layout and the reshape copied: 5 µs more an update)
        suffix = _suffix_rows(self.top_cores[site + 1 :])  # (p^(L-k-1), c, D_right)
        pairs = prefix.reshape(prefix.shape[0], 1, C, -1, 1) * suffix.unsqueeze(2)  # (x, y, c, a, b)
        return pairs.reshape(prefix.shape[0] * suffix.shape[0], -1)

    def folded_basis_environment(self, unit: Unit, monomials: Tensor, monomial_of: Tensor) -> Tensor:
        """A top core's `environment` on every tuple of basis vectors (e_{i_0}, …, e_{i_{L-1}}), E_basis (p^L, C,
        numel(core)), summed over the basis tuples of each monomial: V (S, C, numel(core)) with
        V[m] = Σ_{t: monomial_of[t] = m} E_basis[t] (`ntn.moments`); monomials (S, L) holds each one's
        sorted index tuple.

        For a top core (a, j, b), E_basis[t] depends on t through left[x] (c, a, s) of its prefix x = t_<k, t_k and
        right[y] (c, b, u) of its suffix y = t_>k (the ladder's columns on basis vectors: `_prefix_rows`,
        `_suffix_rows`): Σ_{s,u} left[x,c,a,s] G[t_k][s,j,u] right[y,c,b,u], G[i] the input row at φ_k = e_i: left G
        on every (t_k, x), summed per multiset Q of those k + 1 indices (the monomial of t is that of (Q, y)), times
        right on every pair (Q, y), or, where the pairs left ⊗ right are fewer (dl·dr ≤ r), those summed per (monomial,
        t_k) and G applied per monomial; at a chain's end, where one side is a row of ones, the other side summed per
        multiset first (`_folded_end`). Never E on all p^L tuples through every core and folded (p^L · C · numel(core)
        entries). (Cores that read φ's index, MPO2's and MMPO2's top cores and every input core, are folded onto their
        rows by `Moments._held_environment`: this is the form of the others, LMPO2's top cores.)"""
        n_monomials, p, k, C = monomials.shape[0], self.phys_dim, unit.site, self.output_dim
        top, G, left, right = self._basis_sides(k)
        (Dl, r, _, Dr), (dl, dr) = top.shape, G.shape[1::2]
        if k in (0, self.L - 1):
            V = self._folded_end(k, G, right if k == 0 else left, n_monomials)
        elif dl * dr > r:
            # left G as one product per i, rows (i, x) (22 µs; the einsum took 46), summed per multiset Q of those
            # k + 1 indices (the monomial of (x, i, y) is that of (Q, y)), then one product per (c, y) with right:
            # p^(L-k-1)·M_k pairs (y, Q) (405 at L = 3, p = 9), not p^L tuples (729), made in the fold's row order
            # (one product per c made (c, (y, b), (Q, a, j)), whose permute copied with a stride of Q·a·j: this fold
            # took 420–540 µs a call in a LMPO2 run, now 330–390)
            place, pair_monomials = _multiset_rows(self.L, p, k + 1, G.device, other_first=True)
            left_rows = left.permute(1, 0, 2, 3).reshape(C, 1, -1, dl)  # (c, 1, (x, a), s)
            left_G = left_rows @ G.reshape(1, p, dl, r * dr)  # (c, i, (x, a), (j, u))
            left_G = left_G.reshape(C, p * left.shape[0], -1)  # (c, (i, x), (a, j, u))
            n_sets = pair_monomials.shape[0] // right.shape[0]  # M_k multisets Q
            left_G = fold_rows(left_G, place, n_sets, dim=1)  # (c, Q, (a, j, u))
            right_rows = right.permute(1, 0, 3, 2)  # (c, y, u, b)
            per_pair = left_G.reshape(C, 1, -1, dr) @ right_rows  # (c, y, (Q, a, j), b)
            per_pair = per_pair.reshape(C, right.shape[0], n_sets, -1).permute(1, 2, 0, 3)  # (y, Q, c, (a, j, b))
            V = fold_rows(per_pair.reshape(pair_monomials.shape[0], -1), pair_monomials, n_monomials)
        else:
            pairs = left[:, None, :, :, :, None, None] * right[None, :, :, None, None, :, :]  # (x, y, c, a, s, b, u)
            pair, monomial_and_i_k = self._tuple_rows(k, monomial_of)
            W = fold_rows(pairs.flatten(0, 1).flatten(1).index_select(0, pair), monomial_and_i_k, n_monomials * p)
            V = torch.einsum("micasbu,isju->mcajb", W.reshape(n_monomials, p, C, Dl, dl, Dr, dr), G)
        V = V.reshape(n_monomials, C, Dl, r, Dr)
        if k == self.output_site:  # top core carries c: V[m, c, a, j, c', b] = V[m, c, a, j, b] δ_cc'
            V = _with_output_index(V.transpose(0, 1), 4).transpose(0, 1)
        return V.reshape(n_monomials, C, -1)

    def _folded_end(self, k: int, G: Tensor, side: Tensor, n_monomials: int) -> Tensor:
        """`folded_basis_environment` of the top core at a chain's end, k = 0 or L − 1: (S, C, Dl·r·Dr).

        There E_basis[t] = Σ_w G[t_k] side[q] over the bond w between them, side (p^(L-1), c, X, w) the rows of the
        other L − 1 indices q, so the fold sums each multiset Q of them first (`_multiset_side`), then
        V[m] = Σ_{distinct i in m} G[i] side_sym[m − i]: M·p products (M multisets; 405 at L = 3, p = 9) instead of
        p^L (729). Measured for LMPO2 at L = 3 bond 6 (with the side's sum, now shared with the input core): 59-65 µs
        per update, from 97-111 µs per tuple."""
        p, C, r = self.phys_dim, self.output_dim, G.shape[2]
        _, pair_monomials = _multiset_rows(self.L, p, self.L - 1, G.device)
        side_sym = self._multiset_side(k, side)  # (Q, c, X, w)
        M, (X, w) = side_sym.shape[0], side_sym.shape[2:]
        G_w = G[:, 0].permute(2, 0, 1) if k == 0 else G[..., 0].transpose(0, 1)  # (w, i, j): dl = 1 or dr = 1
        per_pair = (side_sym.reshape(-1, w) @ G_w.reshape(w, -1)).reshape(M, C, X, p, r)  # (Q, c, X, i, j)
        per_pair = per_pair.permute(0, 3, 1, 4, 2) if k == 0 else per_pair.permute(0, 3, 1, 2, 4)  # (Q, i, c, a, j, b)
        return fold_rows(per_pair.reshape(M * p, -1), pair_monomials, n_monomials)

    def _multiset_side(self, k: int, side: Tensor) -> Tensor:
        """At a chain's end, k = 0 or L − 1, the rows of the other L − 1 indices q, side (p^(L-1), c, X, w) (right
        (c, b, u) for k = 0, left (c, a, s) for k = L − 1, from `_basis_sides`), summed per multiset Q of them,
        side_sym[Q] = Σ_{orderings q of Q} side[q]: (M, c, X, w); kept while `_basis_sides` keeps that side: the top
        and the input core at that site both read it."""
        kept = self._kept_multiset_sides.get(k)
        if kept is None or kept[0] is not side:
            place, numbers = multiset_places(self.L - 1, self.phys_dim, side.device)
            kept = (side, fold_rows(side, place, numbers.shape[0]))
            if not torch.is_grad_enabled():  # with grad on, the side is made afresh each time (`_stamp`)
                self._kept_multiset_sides[k] = kept
        return kept[1]

    def input_multisets(self, unit: Unit) -> Tensor:
        """`input_pairs` summed over the orderings of each multiset Q of the L − 1 indices around the site,
        (M, C·dl·r·dr), columns (c, (s, j, u)) (`Moments._held_environment`): at a chain's end, where a pair is the
        other side's row times the top core, the side's rows summed first (`_multiset_side`, which the top core at
        that site reads too), then one product."""
        k, L = unit.site, self.L
        if 0 < k < L - 1:
            pairs = self.input_pairs(unit)
            place, numbers = multiset_places(L - 1, self.phys_dim, pairs.device)
            return fold_rows(pairs, place, numbers.shape[0])
        top, _, left, right = self._basis_sides(k)  # top (Dl, r, C, Dr)
        side_sym = self._multiset_side(k, right if k == 0 else left)  # (Q, c, X, w)
        if k == 0:  # Σ_b A[0, j, c, b] side_sym[Q, c, b, u]: (Q, c, j, u)
            rows = top[0].permute(1, 0, 2) @ side_sym
        else:  # Σ_a side_sym[Q, c, a, s] A[a, j, c, 0]: (Q, c, s, j)
            rows = side_sym.mT @ top[..., 0].permute(2, 0, 1)
        return rows.reshape(rows.shape[0], -1)

    def input_pairs(self, unit: Unit) -> Tensor:
        """An input core's environment on every (suffix y, prefix x) pair of basis tuples around its site, whatever
        index i it reads: (p^(L-1), C·dl·r·dr), rows y·p^k + x (the product's own order: `input_multisets`, which reads
        it at a site inside the chain, sums over the orderings of the L − 1 indices), entries Σ_{a,b} left[x,c,a,s]
        A[a,j,c,b] right[y,c,b,u] at (c, (s, j, u)), A the top core: (left A) (p^k·dl·r, Dr) @ right[y] (Dr, dr), a
        product per (c, y) (one per c made (c, (x, s, j), (y, u)), whose permute copied: input_multisets at a middle
        site of LMPO2 at L = 3 bond 6 took 223 µs a call in a run, now 176-185: medians). Left A as one product per
        c 4-8 µs (the einsum took 14-18, one product per x 3-5 µs more in a run)."""
        C, k = self.output_dim, unit.site
        top, _, left, right = self._basis_sides(k)
        Dl, Dr = top.shape[0], top.shape[3]
        top_rows = top.permute(2, 0, 1, 3).reshape(C, Dl, -1)  # (c, a, (j, b))
        left_top = torch.bmm(left.permute(1, 0, 3, 2).reshape(C, -1, Dl), top_rows)  # (c, (x, s), (j, b))
        per_pair = left_top.reshape(C, 1, -1, Dr) @ right.transpose(0, 1)  # (c, y, (x, s, j), u)
        per_pair = per_pair.reshape(C, right.shape[0], left.shape[0], -1).permute(1, 2, 0, 3)  # (y, x, c, (s, j, u))
        return per_pair.reshape(left.shape[0] * right.shape[0], -1)  # ((y, x), (c, (s, j), u))

    def _basis_sides(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What the fold at site k reads: the top core (Dl, r, C, Dr) with the output index c, the input row on
        e_i (p, dl, r, dr), the ladder left of k on every prefix x (p^k, C, Dl, dl) and right of it on every suffix
        y (p^(L-k-1), C, Dr, dr)."""
        L, p, C = self.L, self.phys_dim, self.output_dim
        top = self.top_cores[k]
        top = top if top.shape[2] == C else top.expand(-1, -1, C, -1)  # the output index, where top carries it, is c
        if self.input_cores is None:  # the input row at φ_k = e_i: (p, dl, r, dr)
            G = basis_inputs(1, p, top.dtype, top.device)[:, :, :, None]  # e_i itself
        else:
            G = self.input_cores[k].transpose(0, 1)
        (Dl, _, _, Dr), (dl, dr) = top.shape, G.shape[1::2]
        stamp = _stamp([core for j in range(L) if j != k for core in self._cores_at(j)])
        kept = self._kept_sides.get(k)  # kept while the other sites' cores are: a sweep updates site k's cores next
        if kept is None or not unchanged(kept[0], stamp):
            left_columns, right_columns = self._columns(range(k)), self._columns(range(k + 1, L))
            ones = top.new_ones(1, 1, 1)
            left = (_prefix_rows(left_columns) if k > 0 else ones).expand(-1, C, -1).reshape(-1, C, Dl, dl)
            right = (_suffix_rows(right_columns) if k < L - 1 else ones).expand(-1, C, -1).reshape(-1, C, Dr, dr)
            kept = (stamp, left, right)
            if stamp is not None:
                self._kept_sides[k] = kept
        return top, G, kept[1], kept[2]

    def _tuple_rows(self, k: int, monomial_of: Tensor) -> tuple[Tensor, Tensor]:
        """For every basis tuple t (row-major), the row of its pair (t_<k, t_>k) and of its (monomial, t_k)."""
        L, p = self.L, self.phys_dim
        prefix, i_k, suffix = _tuple_parts(L, p, k, monomial_of.device)  # (p^L,) each
        return prefix * p ** (L - k - 1) + suffix, monomial_of * p + i_k

    def _cores_at(self, site: int) -> list[Tensor]:
        """The cores at a site: its top core, and its input core where the network has an input row."""
        return [self.top_cores[site]] if self.input_cores is None else [self.top_cores[site], self.input_cores[site]]

    def _columns(self, sites: range) -> list[Tensor]:
        """The ladder's columns at `sites` on the basis vectors, (D_left·d_left, p, C_k, D_right·d_right) each."""
        if self.input_cores is None:
            return self.top_cores[sites.start : sites.stop]
        return [self._basis_column(k) for k in sites]

    def _basis_column(self, k: int) -> Tensor:
        """The ladder's column at site k on the basis vectors, kept while its two cores are unchanged: a sweep updates
        one core at a time, and the fold at any site reads the L − 1 other columns (20-25 us each to make)."""
        top, inp = self.top_cores[k], self.input_cores[k]
        stamp = _stamp([top, inp])
        kept = self._kept_columns.get(k)
        if kept is not None and unchanged(kept[0], stamp):
            return kept[1]
        (Dl, r, C_k, Dr), (dl, p, _, dr) = top.shape, inp.shape
        # Σ_j A[a, j, c, b] B[s, i, j, t] as ((s, i, t), j) @ (j, (a, c, b))
        column = inp.transpose(2, 3).reshape(-1, r) @ top.transpose(0, 1).reshape(r, -1)
        column = column.reshape(dl, p, dr, Dl, C_k, Dr).permute(3, 0, 1, 4, 5, 2)  # (a, s, i, c, b, t)
        column = column.reshape(Dl * dl, p, C_k, Dr * dr)
        if stamp is not None:
            self._kept_columns[k] = (stamp, column)
        return column

    def _assemble(self, unit: Unit, left: Tensor, inp: Tensor, right: Tensor, phi_k: Tensor) -> Tensor:
        """E from the environment factors and the input φ_k read at the core's site: (B, C, numel(core))."""
        B, C, k = phi_k.shape[0], self.output_dim, unit.site
        if unit.layer == INPUT:
            top_c = self.top_cores[k].expand(-1, -1, C, -1)  # the output index, where top carries it, is c
            E = torch.einsum("ncas,ajcb,ncbt,ni->ncsijt", left, top_c, right, phi_k)
            return E.reshape(B, C, -1)
        E = torch.einsum("ncas,nsjt,ncbt->ncajb", left, inp, right)
        if k == self.output_site:  # top core carries c: E[n, c, a, j, c', b] = E[n, c, a, j, b] δ_cc'
            E = _with_output_index(E.transpose(0, 1), 4).transpose(0, 1)
        return E.reshape(B, C, -1)

    def reads_phi(self, unit: Unit) -> bool:
        """Whether the core's physical index is φ's own (MPO2's and MMPO2's top cores, every input core): its
        folded environment V[m, :, (…, j, …)] (`folded_basis_environment`) is then 0 unless monomial m holds j."""
        return unit.layer == INPUT or self.input_cores is None or self.sorted_only

    def masked(self, unit: Unit) -> bool:
        """Whether the core is a top core behind MMPO2's mask: its environment on the sorted index tuples alone."""
        return self.sorted_only and unit.layer == TOP

    def is_kronecker(self, unit: Unit) -> bool:
        """Whether E_n = left_n ⊗ φ_n ⊗ right_n for this core (MPO2 top cores, one output)."""
        return unit.layer == TOP and self.input_cores is None and self.output_dim == 1

    def dense(self) -> Tensor:
        """The fully contracted weight tensor W[i_0, …, i_{L-1}, c] (p^L · C entries; small L only):
        the ladder's columns, each (D_left·d_left, p, C_k, D_right·d_right), multiplied along the chain."""
        C, p = self.output_dim, self.phys_dim
        columns = (
            self.top_cores if self.sorted_only else self._columns(range(self.L))
        )  # behind MMPO2's mask: the top row, masked
        W = _prefix_rows(columns).expand(-1, C, -1)  # (p^L, c, 1)
        if self.sorted_only:  # the mask: 1 on sorted tuples, 0 elsewhere
            W = W * _is_sorted(self.L, p, W.device)[:, None, None]
        return W.reshape(*[p] * self.L, C)


_SWEEP = threading.local()  # .open: whether this thread is inside `sweeping`
_NEVER = itertools.count(-2, -1)  # versions that match no other


@contextlib.contextmanager
def sweeping() -> Iterator[None]:
    """While open in this thread, the inference-tensor cores are those a trainer's sweep makes (`NTN._sweep`): it
    replaces cores but changes none in place, so their identity stands for them (`versions`). Outside it, an
    inference tensor's changes cannot be counted: no table kept for one is reused."""
    was_open = getattr(_SWEEP, "open", False)
    _SWEEP.open = True
    try:
        yield
    finally:
        _SWEEP.open = was_open


def versions(tensors: list[Tensor]) -> tuple[tuple[Tensor, int], ...]:
    """Each tensor with its version (torch counts its changes in place), for `unchanged`. An inference tensor has no
    count: inside `sweeping` its identity stands for it (version -1), elsewhere it gets a version that matches none."""
    swept = getattr(_SWEEP, "open", False)
    return tuple(
        (tensor, (-1 if swept else next(_NEVER)) if tensor.is_inference() else tensor._version) for tensor in tensors
    )


def _stamp(cores: list[Tensor]) -> tuple[tuple[Tensor, int], ...] | None:
    """The cores' `versions`, for a table kept for them; None with grad on: what autograd may record is made afresh
    (a kept table, made in inference mode, has no record and cannot be saved for backward) and not kept."""
    return None if torch.is_grad_enabled() else versions(cores)


def restamped(stamp: tuple[tuple[Tensor, int], ...], copies: dict[int, Tensor]) -> tuple[tuple[Tensor, int], ...]:
    """A `versions` stamp with each tensor that was copied (`TensorNetwork.make_cores_normal`) replaced by its copy."""
    return tuple((copies[id(t)], copies[id(t)]._version) if id(t) in copies else (t, v) for t, v in stamp)


def constant(maxsize: int = 32) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """`functools.lru_cache` for a function that makes constant tensors (index maps, identities, masks): made as
    normal tensors even when first asked for inside inference mode (a sweep in `NTN.fit`), so that a table made
    there serves autograd later too."""

    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(function)
        def made(*args: Any, **kwargs: Any) -> T:
            with torch.inference_mode(False):
                return function(*args, **kwargs)

        return made

    return decorate


def unchanged(kept: tuple[tuple[Tensor, int], ...], now: tuple[tuple[Tensor, int], ...] | None) -> bool:
    """Whether two `versions` name the same tensors, none changed in between (now None, a `_stamp` with grad on:
    never)."""
    return now is not None and len(kept) == len(now) and all(a is b and u == v for (a, u), (b, v) in zip(kept, now))


def basis_tuples(L: int, p: int, device: torch.device) -> Tensor:
    """Every index tuple (i_0, …, i_{L-1}) in row-major order: (p^L, L)."""
    return torch.cartesian_prod(*[torch.arange(p, device=device)] * L).reshape(-1, L)


@constant()
def basis_inputs(L: int, p: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The per-site inputs (e_{i_0}, …, e_{i_{L-1}}) for every `basis_tuples` row: (p^L, L, p); made once
    per shape (every core update of a moments trainer reads it)."""
    return torch.eye(p, dtype=dtype, device=device)[basis_tuples(L, p, device)]


def _prefix_rows(columns: list[Tensor]) -> Tensor:
    """A chain of columns (D_left, p, C_k, D_right), D_left = 1 for the first, on every tuple of basis vectors:
    (p^n, c, D_right), rows in row-major order; one batched product over c per column, carried as (c, tuples, D)."""
    rows = columns[0][0].transpose(0, 1)  # (C_0, p, D_1)
    for column in columns[1:]:  # (c, tuples, D) @ (C_k, D, p·Dr): (c, tuples, p·Dr), i.e. (c, tuples·p, Dr)
        product = rows @ column.permute(2, 0, 1, 3).flatten(2)
        rows = product.reshape(product.shape[0], -1, column.shape[3])
    return rows.transpose(0, 1)


def fold_rows(per_tuple: Tensor, rows: Tensor, n_rows: int, dim: int = 0) -> Tensor:
    """Σ of per_tuple (T, …) over the rows t with rows[t] = each row: (n_rows, …) (T tuples, pairs of a multiset and a
    tuple, or tuples summed per multiset; a row no t names stays 0); along `dim` instead of the first axis."""
    shape = list(per_tuple.shape)
    shape[dim] = n_rows
    return per_tuple.new_zeros(shape).index_add_(dim, rows, per_tuple)


def _suffix_rows(columns: list[Tensor]) -> Tensor:
    """`_prefix_rows` from the right, D_right = 1 for the last column: (p^n, c, D_left)."""
    return _suffix_columns(columns).permute(2, 0, 1).contiguous()  # rows in memory order: gathers of them are fast


def _suffix_columns(columns: list[Tensor]) -> Tensor:
    """`_suffix_rows` as carried, (c, D_left, p^n): one batched product over c per column."""
    rows = columns[-1].squeeze(3).permute(2, 0, 1)  # (C, D_left, p)
    for column in reversed(columns[:-1]):  # (C_k, Dl·p, D) @ (c, D, tuples): (c, Dl·p, tuples), i.e. (c, Dl, p·tuples)
        product = column.permute(2, 0, 1, 3).flatten(1, 2) @ rows
        rows = product.reshape(product.shape[0], column.shape[0], -1)
    return rows


@constant()
def _is_sorted(L: int, p: int, device: torch.device) -> Tensor:
    """Whether each `basis_tuples` row is sorted, i_0 ≤ … ≤ i_{L-1}: (p^L,) bool; made once per shape."""
    tuples = basis_tuples(L, p, device)
    return (tuples[:, 1:] >= tuples[:, :-1]).all(dim=1)


def _with_output_index(T: Tensor, axis: int) -> Tensor:
    """T (C, ...) with a second output index c' at `axis`, T'[c, ..., c', ...] = T[c, ...] δ_cc' (the top
    core that carries the output): for one output a view, else the diagonal filled."""
    C = T.shape[0]
    if C == 1:
        return T.unsqueeze(axis)
    out = T.new_zeros(*T.shape[:axis], C, *T.shape[axis:])
    out.diagonal(dim1=0, dim2=axis).copy_(T.movedim(0, -1))
    return out


@constant()
def _tuple_parts(L: int, p: int, k: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """For every basis tuple t in row-major order, the numbers of its prefix i_<k and suffix i_>k, and i_k."""
    t = torch.arange(p**L, device=device)
    return t // p ** (L - k), t // p ** (L - k - 1) % p, t % p ** (L - k - 1)


@constant()
def multiset_places(n: int, p: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The place of every tuple of n indices < p (row-major) among the M multisets of n indices (sorted,
    `torch.combinations` order), (p^n,), and each multiset's base-p number, (M,); made once per shape."""
    powers = p ** torch.arange(n - 1, -1, -1, device=device)  # (n,)
    multisets = torch.combinations(torch.arange(p, device=device), n, with_replacement=True).reshape(-1, n)
    numbers = (multisets * powers).sum(dim=1)  # (M,)
    place = torch.empty(p**n, dtype=torch.long, device=device)
    place[numbers] = torch.arange(len(numbers), device=device)
    return place[(basis_tuples(n, p, device).sort(dim=1).values * powers).sum(dim=1)], numbers


@constant()
def _multiset_rows(L: int, p: int, n: int, device: torch.device, other_first: bool = False) -> tuple[Tensor, Tensor]:
    """For a fold that sums n of a basis tuple's L indices per multiset Q first (`folded_basis_environment`): the
    place of every tuple of n indices among their M multisets (`multiset_places`), (p^n,), and the monomial of each
    (Q, q), q a tuple of the other L − n indices (row-major), wherever they sit in the tuple, (M·p^(L-n),), rows
    (Q, q), or (q, Q) with `other_first`; made once per shape."""
    place, numbers = multiset_places(n, p, device)
    tuples = numbers[:, None] * p ** (L - n) + torch.arange(p ** (L - n), device=device)  # (M, p^(L-n)): (Q, q)
    monomials = multiset_places(L, p, device)[0][tuples]
    return place, (monomials.T if other_first else monomials).flatten()


def _reduction_cores(
    L: int, bond_dim: int, phys_dim: int, rank: int, init_strength: float, seed: int | None
) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed + 1_000_003) if seed is not None else None
    d = _bond_dims(L, bond_dim)
    return [
        init_strength * torch.randn(d[k], phys_dim, rank, d[k + 1], generator=generator, dtype=torch.float64)
        for k in range(L)
    ]


def _ordering_mask_cores(L: int, phys_dim: int) -> list[Tensor]:
    """MPO whose contraction is 1 on index tuples i_0 ≤ … ≤ i_{L-1} and 0 elsewhere.

    Its bond carries the previous index: M_k[s, i, j, t] = δ_ij · δ_jt · [j ≥ s].
    """
    p = phys_dim
    i = torch.arange(p)
    passes = (i[None, :] >= i[:, None]).double()  # [s, j] = j >= s
    middle = torch.zeros(p, p, p, p, dtype=torch.float64)
    middle[:, i, i, i] = passes  # (s, i=j, j, t=j)
    first = middle[:1].clone()  # no previous index: s = 0 lets every j pass
    last = middle.sum(dim=3, keepdim=True)  # close the chain: sum over t = j
    return [first] + [middle] * (L - 2) + [last]


def MPO2(
    *,
    L: int,
    bond_dim: int,
    phys_dim: int,
    output_dim: int = 1,
    output_site: int = 1,
    init_strength: float = 0.1,
    seed: int | None = None,
) -> TensorNetwork:
    """Tensor train of L cores over φ(x) = [x, 1]: a polynomial of degree ≤ L in x.

    Parameters: Σ_k D_k·p·D_{k+1}, times output_dim on `output_site` (D_0 = D_L = 1). For L=3,
    bond_dim=6, phys_dim=9, output_dim=1: 54 + 324 + 54 = 432.
    """
    shape = dict(L=L, bond_dim=bond_dim, phys_dim=phys_dim, output_dim=output_dim, output_site=output_site)
    net = TensorNetwork(**shape, init_strength=init_strength, input_layer=None, seed=seed)
    net.recipe = {"model": "MPO2", **shape}
    return net


def LMPO2(
    *,
    L: int,
    bond_dim: int,
    phys_dim: int,
    output_dim: int = 1,
    output_site: int = 1,
    init_strength: float = 0.1,
    rank: int | None = None,
    reduction_factor: float = 0.5,
    seed: int | None = None,
) -> TensorNetwork:
    """MPO2 over a trainable linear reduction MPO that maps φ(x) to `rank` dims at every site.

    rank defaults to max(2, int(phys_dim × reduction_factor)). Parameters: the reduction MPO's
    Σ_k D_k·p·rank·D_{k+1} plus an MPO2 with phys_dim = rank. For L=3, bond_dim=6, phys_dim=9,
    rank=4: 216 + 1296 + 216 (reduction) + 24 + 144 + 24 (top) = 1920.
    """
    if rank is None:
        if not 0 < reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be in (0, 1], got {reduction_factor!r}")
        rank = max(2, int(phys_dim * reduction_factor))
    _check("rank", rank, 1)
    _check("L", L, 2)
    _check("bond_dim", bond_dim, 1)
    reduction = InputLayer(_reduction_cores(L, bond_dim, phys_dim, rank, init_strength, seed), trainable=True)
    shape = dict(L=L, bond_dim=bond_dim, phys_dim=phys_dim, output_dim=output_dim, output_site=output_site)
    net = TensorNetwork(**shape, init_strength=init_strength, input_layer=reduction, seed=seed)
    net.recipe = {"model": "LMPO2", **shape, "rank": rank}
    return net


def MMPO2(
    *,
    L: int,
    bond_dim: int,
    phys_dim: int,
    output_dim: int = 1,
    output_site: int = 1,
    init_strength: float = 0.1,
    seed: int | None = None,
) -> TensorNetwork:
    """MPO2 behind a fixed mask that keeps only index tuples i_0 ≤ … ≤ i_{L-1}.

    Each monomial of degree ≤ L then has exactly one coefficient path. The mask is not trained, so
    the parameter count equals MPO2's (432 for L=3, bond_dim=6, phys_dim=9, output_dim=1).
    """
    _check("L", L, 2)
    _check("phys_dim", phys_dim, 2)
    mask = InputLayer(_ordering_mask_cores(L, phys_dim), trainable=False, sorted_only=True)
    shape = dict(L=L, bond_dim=bond_dim, phys_dim=phys_dim, output_dim=output_dim, output_site=output_site)
    net = TensorNetwork(**shape, init_strength=init_strength, input_layer=mask, seed=seed)
    net.recipe = {"model": "MMPO2", **shape}
    return net
