"""Keep training-time state of an operator fixed during the graph-free solver iterations.

In training mode a BatchNorm layer normalises with batch statistics *and* updates its running
statistics on every call. A forward solve calls T tens of times per step, so the paper's code
updated the running statistics at every iteration. Inside :func:`frozen_running_stats` each
BatchNorm layer still normalises with the batch statistics (T is the same map as in the final
application) but its running statistics and ``num_batches_tracked`` are left untouched; the
layer's one application of T with grad then updates them exactly once per training step.
Spectral-norm parametrisations are likewise kept from running a power-iteration step per
solver iteration (which would also change T between iterations), and parametrised weights are
computed once per solve instead of once per iteration.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.modules.batchnorm import _BatchNorm


def _spectral_norm_parametrizations(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if type(m).__name__ == "_SpectralNorm"]


@contextmanager
def frozen_running_stats(operator: Any) -> Iterator[None]:
    """Context in which ``operator``'s BatchNorm running statistics and spectral-norm vectors do not change."""
    if not isinstance(operator, nn.Module) or not operator.training:
        yield
        return
    norms = [m for m in operator.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    spectral = [m for m in _spectral_norm_parametrizations(operator) if m.training]
    for m in norms:
        m.track_running_stats = False
    for m in spectral:
        m.training = False
    try:
        with parametrize.cached():
            yield
    finally:
        for m in norms:
            m.track_running_stats = True
        for m in spectral:
            m.training = True
