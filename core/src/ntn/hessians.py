"""A core's Newton system in the forms its Hessian takes, each solving its damped system the cheapest way it can.

A system holds H and the right side b = H θ − g (g the data term's gradient at θ), so that
the damped Newton step of J = data term + (ridge/2) ||θ||² is

    θ − (H + μI)⁻¹ (g + ridge · θ) = (H + μI)⁻¹ (b + (μ − ridge) θ),      μ ≥ ridge the damping,

and, undamped (μ = ridge), the minimiser of J's quadratic model: (H + μI)⁻¹ b, with no gradient formed and no
θ − step cancellation. Both sides act on the core's parameters (P,); inside, a system may hold them reordered into
`blocks` independent systems of P' parameters each (`order`): a top core that carries the output index c has a
Hessian that is block diagonal in c, and a core whose V is sparse in its physical index is cheapest in the order
(j, …). A failed factorisation raises inside torch (`torch.linalg.LinAlgError`, no check of ours); a solve checks
its result's sum once (one device sync).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ntn.models import constant, fold_rows


def z_times(Z: Tensor, u: Tensor) -> Tensor:
    """Z̃ u for u (blocks, R, …) with rows (monomial, c): Z (S, S) applied to the monomial index."""
    if u.shape[0] == 1:  # one block: a plain product (shape[0], not len(): a Python call less per product)
        return (Z @ u.reshape(Z.shape[0], -1)).reshape(u.shape)
    return (Z @ u.reshape(u.shape[0], Z.shape[0], -1)).reshape(u.shape)


class HeldRows:
    """V (blocks, R, P') given on the rows that hold each index j alone (a core that reads φ's index): V_held
    (blocks, p, M, c, X) with V[(holding[j, h], c), (j, x)] = V_held[j, h, c, x] and 0 elsewhere; rows (monomial, c),
    R = S·c, parameters (j, x), P' = p·X. `shared`: every j's held rows are the same, V_held[:, j] = V_held[:, 0] (a
    view that repeats it: the multisets m − {j}, `ntn.moments`), so the products take them once."""

    def __init__(self, V_held: Tensor, holding: Tensor, n_monomials: int, shared: bool) -> None:
        """:param holding: (p, M) the monomials that hold each j"""
        self.V_held, self.holding, self.shared = V_held, holding, shared
        blocks, p, M, c, X = V_held.shape
        self.shape = (blocks, n_monomials * c, p * X)
        # where every j's held rows are the same (`shared`), those rows once: (blocks, M·c, X)
        self.shared_rows = V_held[:, 0].reshape(blocks, M * c, X) if shared else None

    def t_times(self, u: Tensor) -> Tensor:
        """Vᵀ u (blocks, P', 1) for u (blocks, R, 1), from the held rows alone."""
        blocks, p, M, c, X = self.V_held.shape
        u_held = u.reshape(blocks, -1, c).index_select(1, self.holding.flatten())  # (blocks, p·M, c)
        if self.shared:  # (p, M·c) @ (M·c, X) per block
            product = torch.bmm(u_held.reshape(blocks, p, M * c), self.shared_rows)
        else:  # u_heldᵀ V_held: row-vector products in one 3-d batch, 4-5× faster than Vᵀ u_held at L = 3
            product = torch.bmm(u_held.reshape(blocks * p, 1, M * c), self.V_held.reshape(blocks * p, M * c, X))
        return product.reshape(blocks, p * X, 1)  # (blocks, p, X) or (blocks·p, 1, X) as (blocks, p·X, 1)

    def times(self, u: Tensor) -> Tensor:
        """V u (blocks, R, 1) for u (blocks, P', 1): each index's held rows times its parameters, summed into place."""
        blocks, p, M, c, X = self.V_held.shape
        if self.shared:  # (M·c, X) @ (X, p) per block, then as (p, M, c)
            per_index = u.reshape(blocks, p, X).mT
            per_row = torch.bmm(self.shared_rows, per_index).reshape(blocks, M, c, p)
            per_row = per_row.permute(0, 3, 1, 2)
        else:
            per_row = torch.bmm(self.V_held.reshape(blocks * p, M * c, X), u.reshape(blocks * p, X, 1))
        rows = fold_rows(per_row.reshape(blocks, p * M, c), self.holding.flatten(), self.shape[1] // c, dim=1)
        return rows.reshape(blocks, -1, 1)  # (blocks, S, c) as (blocks, R, 1)

    def dense(self) -> Tensor:
        """V (blocks, R, P') with its zeros (tests, a system's dense forms)."""
        blocks, p, _, c, X = self.V_held.shape
        V = self.V_held.new_zeros(blocks, self.shape[1] // c, c, p, X)
        V[:, self.holding, :, torch.arange(p, device=V.device)[:, None]] = self.V_held.permute(1, 2, 0, 3, 4)
        return V.reshape(self.shape)


def times(V: Tensor | HeldRows, u: Tensor) -> Tensor:
    """V u for V (blocks, R, P') or V on its held rows, u (blocks, P', 1): (blocks, R, 1)."""
    return V.times(u) if isinstance(V, HeldRows) else torch.bmm(V, u)


def transposed_times(V: Tensor | HeldRows, u: Tensor) -> Tensor:
    """Vᵀ u for V (blocks, R, P') or V on its held rows, u (blocks, R, 1): (blocks, P', 1)."""
    return V.t_times(u) if isinstance(V, HeldRows) else torch.bmm(V.transpose(1, 2), u)


class NewtonSystem:
    """H on `blocks` systems of P' parameters and b; order[b, i] is the core parameter of entry (b, i)."""

    def __init__(self, order: tuple[Tensor, Tensor] | None, shape: tuple[int, int]) -> None:
        """:param order: (order, its inverse (P,): the entry of each core parameter), or None: the core's order"""
        self.shape = shape  # (blocks, P')
        self.order, self.inverse = (None, None) if order is None else order

    def to_blocks(self, x: Tensor) -> Tensor:
        """The core's P parameters (any shape, row-major) as (blocks, P')."""
        return x.reshape(self.shape) if self.order is None else x.take(self.order)

    def to_core(self, x: Tensor) -> Tensor:
        """(blocks, P') or (blocks, P', 1) back in the core's order (P,)."""
        return x.reshape(-1) if self.inverse is None else x.take(self.inverse)

    def step(self, shift: Tensor, theta: Tensor, weight: Tensor | None, scale: float = 1.0) -> Tensor | None:
        """(H + μI)⁻¹ (b + w·θ), μ = scale·shift, w = scale·weight (weight None: 0), in the core's order (P,), or None
        where that system is singular or the result not finite (its sum not finite: finite entries whose sum overflows
        count as not finite).

        :param shift: (0-d); :param theta: the core, in its own shape; :param weight: (0-d) or None
        :param scale: a number, so that μ = scale·shift costs no call of its own"""
        try:
            solution = self._solve(shift, scale, None if weight is None else self.to_blocks(theta) * (weight * scale))
        except torch.linalg.LinAlgError:  # not positive definite, or singular
            return None
        return self.to_core(solution) if math.isfinite(solution.sum().item()) else None

    def _solve(self, shift: Tensor, scale: float, extra: Tensor | None) -> Tensor:
        """(H + scale·shift·I)⁻¹ (b + extra) (blocks, P', 1) for extra (blocks, P'); a `torch.linalg.LinAlgError`
        where the system is not positive definite (or singular)."""
        raise NotImplementedError

    def diagonal(self) -> Tensor:
        raise NotImplementedError

    def dense(self) -> Tensor:
        """H (P, P) in the core's order (tests, small cores)."""
        blocks = self._dense_blocks()
        full = torch.block_diag(*blocks) if len(blocks) > 1 else blocks[0]
        return full if self.inverse is None else full[self.inverse][:, self.inverse]

    def rhs(self) -> Tensor:
        """b (P,) in the core's order (tests)."""
        raise NotImplementedError

    def _dense_blocks(self) -> Tensor:
        raise NotImplementedError


class DenseSystem(NewtonSystem):
    """H (blocks, P', P') formed, b (blocks, P', 1): solved by Cholesky."""

    def __init__(self, H: Tensor, b: Tensor, order: tuple[Tensor, Tensor] | None = None):
        """:param H: (blocks, P', P'), or one block (P, P) with b (P,)"""
        H, b = (H, b) if H.ndim == 3 else (H[None], b.reshape(1, -1, 1))
        super().__init__(order, H.shape[:2])
        self.H, self.b = H, b

    def _solve(self, shift: Tensor, scale: float, extra: Tensor | None) -> Tensor:
        identity = _identity(self.shape[1], self.H.dtype, self.H.device)
        damped = torch.addcmul(self.H, identity, shift, value=scale)  # H + μI
        factor = torch.linalg.cholesky(damped)
        rhs = self.b if extra is None else self.b + extra[:, :, None]
        return torch.cholesky_solve(rhs, factor)

    def diagonal(self) -> Tensor:
        return self.to_core(self.H.diagonal(dim1=1, dim2=2))

    def rhs(self) -> Tensor:
        return self.to_core(self.b)

    def _dense_blocks(self) -> Tensor:
        return self.H


class LowRankSystem(NewtonSystem):
    """H = Vᵀ Z̃ V per block, V (blocks, R, P') with R < P' (or V on its held rows), Z̃ = Z ⊗ I on rows (monomial, c),
    Z (S, S), and b = Vᵀ Z_y with Z_y (blocks, R, 1); G = V Vᵀ (blocks, R, R) given (its caller knows where V is
    sparse). Kept factored, solved by the push-through identity: an R × R solve per block in place of a P' × P'
    factorisation,

        (H + μI)⁻¹ r = (r − Vᵀ (μI + Z̃ G)⁻¹ Z̃ V r) / μ,    and for r = b:  Vᵀ (μI + Z̃ G)⁻¹ Z_y."""

    def __init__(self, V: Tensor | HeldRows, Z: Tensor, G: Tensor, Z_y: Tensor, order: tuple | None = None):
        super().__init__(order, (V.shape[0], V.shape[2]))
        self.V, self.Z, self.Z_y = V, Z, Z_y
        self.ZG = z_times(Z, G)  # (blocks, R, R)

    def trace(self) -> Tensor:
        """trace(H) = trace(Z̃ G)."""
        return self.ZG.diagonal(dim1=1, dim2=2).sum()

    def _solve(self, shift: Tensor, scale: float, extra: Tensor | None) -> Tensor:
        identity = _identity(self.ZG.shape[1], self.ZG.dtype, self.ZG.device)
        small = torch.addcmul(self.ZG, identity, shift, value=scale)  # μI + Z̃G
        if extra is None:
            inner = torch.linalg.solve(small, self.Z_y)  # (blocks, R, 1)
            return transposed_times(self.V, inner)
        rhs = transposed_times(self.V, self.Z_y) + extra[:, :, None]  # (blocks, P', 1)
        inner = torch.linalg.solve(small, z_times(self.Z, times(self.V, rhs)))
        return (rhs - transposed_times(self.V, inner)) / (shift * scale)

    def _dense_V(self) -> Tensor:
        return self.V.dense() if isinstance(self.V, HeldRows) else self.V

    def diagonal(self) -> Tensor:
        V = self._dense_V()
        return self.to_core((V * z_times(self.Z, V)).sum(dim=1))

    def rhs(self) -> Tensor:
        return self.to_core(transposed_times(self.V, self.Z_y))

    def _dense_blocks(self) -> Tensor:
        V = self._dense_V()
        return V.transpose(1, 2) @ z_times(self.Z, V)


@constant()
def _identity(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """I (n, n), made once per size: a damped system is H + shift·I in one call (`torch.addcmul`)."""
    return torch.eye(n, dtype=dtype, device=device)
