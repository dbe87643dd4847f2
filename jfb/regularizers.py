"""Training-time regularisers of a fixed point: the Jacobian penalty (Bai et al., "Stabilizing Equilibrium
Models by Jacobian Regularization", ICML 2021) and the choice of iterates for fixed-point correction
(Bai et al., "Deep Equilibrium Optical Flow Estimation", CVPR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor


def jacobian_frobenius(z: Tensor, u: Tensor, probes: int) -> Tensor:
    """Hutchinson estimate of ``||J||_F^2 / d`` for ``z = T(u)`` (flat ``(batch, d)``), averaged over the batch.

    For ``e ~ N(0, I)``, ``E ||J^T e||^2 = trace(J J^T) = ||J||_F^2``: each of the ``probes`` Gaussian
    vectors costs one vector-Jacobian product, and the estimate is unbiased and differentiable (the
    products are recorded with ``create_graph``), so it can be added to the loss.
    """
    total = z.new_zeros(z.shape[0], dtype=torch.promote_types(z.dtype, torch.float32))
    for _ in range(probes):
        probe = torch.randn_like(z)
        (jt_probe,) = torch.autograd.grad(z, u, probe, create_graph=True, retain_graph=True)
        total = total + jt_probe.pow(2).sum(dim=1)
    return (total / (probes * z.shape[1])).mean()


def evenly_spaced(iterates: list[Tensor], count: int) -> list[Tensor]:
    """``count`` of a solve's iterates ``u_1 .. u_n``, evenly spaced before the last one (which the output covers).

    Fewer when the solve made fewer than ``count + 1`` iterations; none after a single iteration.
    """
    n = len(iterates)
    chosen = sorted({round((j + 1) * n / (count + 1)) for j in range(count)} - {0, n})
    return [iterates[i - 1] for i in chosen]
