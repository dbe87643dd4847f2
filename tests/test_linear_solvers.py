"""The IFT linear solvers on small dense systems, where the answer is known."""

from __future__ import annotations

import pytest
import torch

from jfb.backward.linear import fixed_point
from jfb.status import Status


def _system(radius: float, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    J = q @ torch.diag(torch.linspace(-radius, radius, n, dtype=torch.float64)) @ q.T  # symmetric, known spectrum
    return J, torch.randn(n, generator=generator, dtype=torch.float64)


def test_fixed_point_iteration_solves_a_contraction():
    J, b = _system(0.5)
    w, info = fixed_point(lambda v: J.T @ v, b, 1e-10, 200)
    assert info.status == Status.CONVERGED
    assert torch.allclose(w, torch.linalg.solve(torch.eye(6, dtype=J.dtype) - J.T, b), atol=1e-9)


def test_a_diverging_fixed_point_iteration_returns_its_best_iterate_not_the_last():
    """Spectral radius 1.5: the iterates grow like 1.5^k; the last one would be a gradient of any size."""
    J, b = _system(1.5)
    w, info = fixed_point(lambda v: J.T @ v, b, 1e-10, 40)
    residual = (J.T @ w + b - w).norm() / b.norm()
    assert info.status == Status.MAX_ITER
    assert residual.item() == pytest.approx(info.relative_residual, rel=1e-9)  # the reported residual is w's own
    assert w.norm() < 10 * b.norm()  # the last iterate has norm ~1.5^40 ||b||
    last = b.clone()
    for _ in range(40):
        last = J.T @ last + b
    assert last.norm() > 1e6 * b.norm()
