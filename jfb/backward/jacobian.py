"""Counted products with the Jacobian J = dT/du at a fixed point, via autograd.

``vjp(v) = J^T v`` is one backward through T. ``jvp(v) = J v`` uses the double-backward trick:
``J^T y`` is linear in ``y``, so differentiating it with respect to ``y`` in direction ``v``
gives ``J v``; building the ``J^T y`` graph once costs one extra (counted) VJP.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..transforms import Boundary
from .base import FixedPointMap


class JacobianProducts:
    """J^T v and J v of ``z = T(u)`` with respect to ``u``, each call counted in ``count``."""

    def __init__(self, z: Tensor, u: Tensor) -> None:
        self.z, self.u = z, u
        self.count = 0
        self._dummy: Tensor | None = None
        self._jt_dummy: Tensor | None = None

    def vjp(self, v: Tensor) -> Tensor:
        self.count += 1
        (out,) = torch.autograd.grad(self.z, self.u, v, retain_graph=True)
        return out

    def jvp(self, v: Tensor) -> Tensor:
        if self._jt_dummy is None:
            self._dummy = torch.zeros_like(self.z, requires_grad=True)
            self.count += 1
            (self._jt_dummy,) = torch.autograd.grad(self.z, self.u, self._dummy, retain_graph=True, create_graph=True)
        self.count += 1
        (out,) = torch.autograd.grad(self._jt_dummy, self._dummy, v, retain_graph=True)
        return out


class TransposedProducts:
    """The products of ``J^T`` (``vjp(v) = J v``, ``jvp(v) = J^T v``): a linear solver handed these solves
    ``(I - J) v = b``, the system of the IFT gradient's own derivative. Counts go to the wrapped products."""

    def __init__(self, products: JacobianProducts) -> None:
        self.products = products

    def vjp(self, v: Tensor) -> Tensor:
        return self.products.jvp(v)

    def jvp(self, v: Tensor) -> Tensor:
        return self.products.vjp(v)

    @property
    def count(self) -> int:
        return self.products.count


def with_products(
    T: FixedPointMap, u_star: Tensor, b: Tensor, compute: Callable[[JacobianProducts, Tensor], Tensor]
) -> Tensor:
    """``compute(products, b)`` with the J products at ``u*``; inside torch.func transforms it runs outside them,
    on the plain tensors (every vmapped problem at once, see :mod:`jfb.transforms`), and its result is wrapped again."""
    boundary = Boundary.current()
    if boundary is None:
        return compute(JacobianProducts(*T.linearization(u_star)), b)
    with boundary.outside():
        products = JacobianProducts(*T.linearization(u_star, boundary))
        return boundary.wrap(compute(products, boundary.peel(b)))
