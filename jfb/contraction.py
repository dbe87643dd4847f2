"""Keeping T contractive, and checking whether it is.

* :class:`GammaScaled` multiplies an operator's output by ``gamma``: if the branch is
  1-Lipschitz in ``u`` (e.g. spectrally normalised layers with 1-Lipschitz activations), the
  result is a ``gamma``-contraction.
* :func:`spectral_normalize` wraps every Linear / Conv layer of a module with PyTorch's
  spectral-norm parametrisation. For convolutions it normalises the reshaped kernel matrix,
  which bounds but does not equal the convolution's operator norm.
* :func:`lipschitz_estimate` estimates ``||dT/du||_2`` at a point per sample by power iteration.
* :func:`rescale_to_lipschitz` is the paper's contraction control for its Jacobian-based runs:
  estimate T's Lipschitz ratio on a batch from random perturbations, and shrink chosen layers
  when it exceeds ``gamma``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .backward.jacobian import JacobianProducts
from .errors import JfbError
from .frozen import frozen_running_stats
from .nn import spectral_norm
from .state import State, StateLayout, per_sample_norm


class GammaScaled(nn.Module):
    """``T(u, x) = gamma * branch(u, x)``: pass ``branch``, or subclass and define a ``branch`` method.

    ``max_gamma`` bounds gamma from above where the operator is meant to be a contraction.
    """

    def __init__(
        self, branch: Callable[[Tensor, Any], Tensor] | None, gamma: float, max_gamma: float = math.inf
    ) -> None:
        super().__init__()
        if not 0 < gamma <= max_gamma:
            interval = "> 0" if max_gamma == math.inf else f"in (0, {max_gamma:g}]"
            raise JfbError(f"gamma must be {interval}, got {gamma!r}")
        if branch is not None:
            self.branch = branch
        self.gamma = gamma

    def forward(self, u: State, x: Any) -> State:
        """``gamma`` times the branch's output: a tensor, or each tensor of a tuple state."""
        out = self.branch(u, x)
        return tuple(self.gamma * part for part in out) if isinstance(out, tuple) else self.gamma * out


_NORMALIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def spectral_normalize(module: nn.Module, n_power_iterations: int = 1) -> nn.Module:
    """Apply :func:`jfb.nn.spectral_norm` in place to every Linear/Conv layer of ``module``; returns it.

    (Its power iteration runs once per layer call, so T stays one map through a solve; torch's own
    ``spectral_norm`` steps at every call of T in training mode.)
    """
    for child in module.modules():
        if isinstance(child, _NORMALIZABLE) and not hasattr(child, "parametrizations"):
            spectral_norm(child, n_power_iterations=n_power_iterations)
    return module


def lipschitz_estimate(operator: Callable[[Any, Any], Any], u: State, x: Any, iters: int = 30) -> Tensor:
    """Per-sample estimate of the spectral norm of ``J = dT/du`` at ``u`` (power iteration on ``J^T J``).

    ``u`` is any state the layer takes: a tensor or a tuple of batch-first tensors (then J acts on all of
    them together). Values below 1 at a fixed point mean T is locally contractive there. If T couples samples
    (BatchNorm in training mode) call it with the operator in eval mode: the estimate is per
    sample only when T acts on each sample separately.
    """
    if iters < 1:
        raise JfbError(f"iters must be >= 1, got {iters!r}")
    if isinstance(u, tuple | list):
        layout = StateLayout(tuple(u))
        flat_operator = lambda flat, x: layout.flatten(operator(layout.unflatten(flat), x))  # noqa: E731
        return lipschitz_estimate(flat_operator, layout.flatten(tuple(u)), x, iters)
    with torch.enable_grad():
        u = u.detach().requires_grad_()
        products = JacobianProducts(operator(u, x), u)
        v = torch.randn_like(u)
        v = v / _expand(per_sample_norm(v), v)
        sigma = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
        for _ in range(iters):
            w = products.vjp(products.jvp(v))
            sigma = per_sample_norm(w).sqrt()
            v = w / _expand(per_sample_norm(w).clamp_min(torch.finfo(u.dtype).tiny), w)
    return sigma.detach()


@torch.no_grad()
def rescale_to_lipschitz(
    operator: Callable[[Tensor, Any], Tensor],
    u: Tensor,
    x: Tensor,
    gamma: float,
    modules: Sequence[nn.Module],
    power: float | None = None,
) -> tuple[float, float]:
    """Shrink ``modules`` when ``T`` looks more than ``gamma``-Lipschitz on this batch; ``(ratio, factor)``.

    The ratio ``sum_i ||T(w_i, x'_i) - T(u_i, x'_i)|| / sum_i ||w_i - u_i||`` is measured with
    ``w = u + N(0, 1)`` and ``x' = x + N(0, 1)`` (so it averages over the samples of the batch);
    when it exceeds ``gamma`` the weights and biases of every module are multiplied by
    ``(gamma / ratio) ** power`` (default ``1 / len(modules)``). For a residual operator this is
    approximate (the identity part is not scaled), and repeated every step it settles near gamma.
    Running statistics are not touched. One host synchronisation.
    """
    if not gamma > 0 or not modules:
        raise JfbError(
            f"rescale_to_lipschitz needs gamma > 0 and modules to scale, got gamma={gamma!r}, {len(modules)} modules"
        )
    w, x_perturbed = u + torch.randn_like(u), x + torch.randn_like(x)
    with frozen_running_stats(operator):
        moved = per_sample_norm(operator(w, x_perturbed) - operator(u, x_perturbed)).sum()
    ratio = float(moved / per_sample_norm(w - u).sum())
    if ratio <= gamma:
        return ratio, 1.0
    factor = (gamma / ratio) ** (power if power is not None else 1 / len(modules))
    for module in modules:
        module.weight.mul_(factor)
        if getattr(module, "bias", None) is not None:
            module.bias.mul_(factor)
    return ratio, factor


def _expand(per_sample: Tensor, like: Tensor) -> Tensor:
    return per_sample.view(-1, *([1] * (like.dim() - 1)))
