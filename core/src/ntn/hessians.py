"""The forms a core's Hessian H takes, each solving its own damped Newton system (H + μI) x = r.

Each acts on the core's parameters in the core's order (P,). Inside, it may hold them reordered into `blocks`
independent systems of P' parameters each (`order`): a top core that carries the output index c has a Hessian
that is block diagonal in c, and a core whose V is sparse in its physical index is cheapest in the order (j, …).
H is kept as s · H₀ with the scalar s apart (`/ N` costs nothing); a solve makes one check, one device sync.
"""

from __future__ import annotations

import torch
from torch import Tensor


def z_times(Z: Tensor, u: Tensor) -> Tensor:
    """Z̃ u for u (blocks, R, …) with rows (monomial, c): Z (S, S) applied to the monomial index."""
    rows = u.reshape(u.shape[0], len(Z), -1)
    return (Z @ rows[0] if len(rows) == 1 else Z @ rows).reshape(u.shape)  # one block: a plain product


class Hessian:
    """H = scale · H₀ on `blocks` systems of P' parameters; order[b, i] is the core parameter of entry (b, i)."""

    def __init__(self, scale: float, order: tuple[Tensor, Tensor] | None, shape: tuple[int, int]) -> None:
        """:param order: (order, its inverse (P,): the entry of each core parameter), or None: the core's order"""
        self.scale, self.shape = scale, shape  # shape: (blocks, P')
        self.order, self.inverse = (None, None) if order is None else order

    def __truediv__(self, divisor: float) -> Hessian:
        divided = object.__new__(type(self))  # the same factors, the scalar apart: no copy
        divided.__dict__ = self.__dict__ | {"scale": self.scale / divisor}
        return divided

    def to_blocks(self, x: Tensor) -> Tensor:
        """A core-ordered vector (P,) as (blocks, P')."""
        return x.reshape(self.shape) if self.order is None else x.take(self.order)

    def to_core(self, x: Tensor) -> Tensor:
        """(blocks, P') back in the core's order (P,)."""
        return x.reshape(-1) if self.inverse is None else x.take(self.inverse)

    def solve(self, shift: Tensor, rhs: Tensor) -> Tensor | None:
        """(H + shift·I)⁻¹ rhs in the core's order, or None where that system is singular or the step not finite
        (its sum not finite: a step of finite entries whose sum overflows counts as not finite)."""
        step, info = self._solve(shift, self.to_blocks(rhs))
        return self.to_core(step) if (step.sum().isfinite() & info.eq(0).all()).item() else None

    def _solve(self, shift: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
        """(step (blocks, P'), the factorisations' info (blocks,): 0 where one succeeded)."""
        raise NotImplementedError

    def diagonal(self) -> Tensor:
        raise NotImplementedError

    def dense(self) -> Tensor:
        """H (P, P) in the core's order (tests, small cores)."""
        blocks = self._dense_blocks()
        full = torch.block_diag(*blocks) if len(blocks) > 1 else blocks[0]
        return full if self.inverse is None else full[self.inverse][:, self.inverse]

    def _dense_blocks(self) -> Tensor:
        raise NotImplementedError


class DenseHessian(Hessian):
    """H = scale · H₀ with H₀ (blocks, P', P') formed: solved by Cholesky."""

    def __init__(self, H: Tensor, scale: float = 1.0, order: tuple[Tensor, Tensor] | None = None):
        H = H if H.ndim == 3 else H[None]
        super().__init__(scale, order, H.shape[:2])
        self.H = H

    def _solve(self, shift: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
        damped = self.H * self.scale
        damped.diagonal(dim1=1, dim2=2).add_(shift)
        factor, info = torch.linalg.cholesky_ex(damped)
        return torch.cholesky_solve(rhs[:, :, None], factor)[:, :, 0], info

    def diagonal(self) -> Tensor:
        return self.to_core(self.H.diagonal(dim1=1, dim2=2) * self.scale)

    def _dense_blocks(self) -> Tensor:
        return self.H * self.scale


class LowRankHessian(Hessian):
    """H = scale · Vᵀ Z̃ V per block, V (blocks, R, P') with R < P', Z̃ = Z ⊗ I on rows (monomial, c), Z (S, S),
    and G = V Vᵀ (blocks, R, R) given (its caller knows where V is sparse). Kept factored:

        (s Vᵀ Z̃ V + μI)⁻¹ r = (r − Vᵀ (μ/s · I_R + Z̃ G)⁻¹ Z̃ V r) / μ,

    the push-through identity: an R × R solve per block in place of a P' × P' factorisation."""

    def __init__(self, V: Tensor, Z: Tensor, G: Tensor, scale: float = 1.0, order: tuple | None = None):
        super().__init__(scale, order, (V.shape[0], V.shape[2]))
        self.V, self.Z = V, Z
        self.ZG = z_times(Z, G)  # (blocks, R, R)

    def trace(self) -> Tensor:
        """trace(H₀) = trace(Z̃ G)."""
        return self.ZG.diagonal(dim1=1, dim2=2).sum()

    def _solve(self, shift: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
        small = self.ZG.clone()
        small.diagonal(dim1=1, dim2=2).add_(shift, alpha=1 / self.scale)
        inner, info = torch.linalg.solve_ex(small, z_times(self.Z, self.V @ rhs[:, :, None]))  # (blocks, R, 1)
        return (rhs - (self.V.transpose(1, 2) @ inner)[:, :, 0]) / shift, info

    def diagonal(self) -> Tensor:
        return self.to_core((self.V * z_times(self.Z, self.V)).sum(dim=1) * self.scale)

    def _dense_blocks(self) -> Tensor:
        return self.scale * (self.V.transpose(1, 2) @ z_times(self.Z, self.V))
