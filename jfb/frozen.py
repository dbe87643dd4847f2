"""Keep training-time state of an operator fixed during the graph-free solver iterations.

In training mode a BatchNorm layer normalises with batch statistics *and* updates its running
statistics on every call. A forward solve calls T tens of times per step, so the paper's code
updated the running statistics at every iteration. Inside :func:`frozen_running_stats` each
BatchNorm layer still normalises with the batch statistics (T is the same map as in the final
application) but its running statistics and ``num_batches_tracked`` are left untouched; the
layer's one application of T with grad then updates them exactly once per training step.
Parametrisations (``torch.nn.utils.parametrize``) are held in eval mode, so that spectral norm
does not run a power-iteration step per solver iteration (which would also change T between
iterations), and parametrised weights are computed once per solve instead of once per iteration.

An operator that is an ``nn.Module`` is searched directly. For any other callable (a lambda or a
function closing over modules, as torchdeq users write) the modules it calls are caught as they
run, by a global forward pre-hook that lives only for the duration of the context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.utils import parametrize
from torch.nn.utils.stateless import _reparametrize_module


class _Freezer:
    """Switches modules to their frozen behaviour and remembers how to switch them back."""

    def __init__(self) -> None:
        self.norms: list[nn.Module] = []
        self.parametrizations: list[nn.Module] = []

    def freeze(self, module: nn.Module) -> None:
        if isinstance(module, _BatchNorm) and module.training and module.track_running_stats:
            module.track_running_stats = False
            self.norms.append(module)
        elif parametrize.is_parametrized(module):
            for parametrization in module.parametrizations.values():
                for step in parametrization:
                    if step.training:
                        step.training = False
                        self.parametrizations.append(step)

    def restore(self) -> None:
        for m in self.norms:
            m.track_running_stats = True
        for m in self.parametrizations:
            m.training = True


@contextmanager
def frozen_running_stats(operator: Any) -> Iterator[Callable[[], None]]:
    """Context in which the BatchNorm running statistics and parametrisation state (spectral-norm vectors) that
    ``operator`` uses do not change.

    Yields ``settle()``: for a plain-function operator, stop catching modules (call it once T has been
    evaluated: every module T calls is frozen by then). The global hook that catches them puts every module
    call on torch's slow path (measured: 3% of a solve of the MNIST operator), so a solve settles after its
    first evaluation. A module such a function calls for the first time in a later evaluation (data-dependent
    control flow) is not frozen. For an ``nn.Module`` ``settle`` does nothing.
    """
    freezer = _Freezer()
    hook = None
    if isinstance(operator, nn.Module):
        if operator.training:
            for module in operator.modules():
                freezer.freeze(module)
    else:
        hook = register_module_forward_pre_hook(lambda module, args: freezer.freeze(module))

    def settle() -> None:
        nonlocal hook
        if hook is not None:
            hook.remove()
            hook = None

    try:
        with parametrize.cached():
            yield settle
    finally:
        settle()
        freezer.restore()


def call_state(operator: Any) -> dict[str, Tensor]:
    """The parameters and buffers an ``nn.Module`` operator computes with now (during ``torch.func.functional_call``
    those passed to it); empty for a plain function."""
    if not isinstance(operator, nn.Module):
        return {}
    return {**dict(operator.named_parameters(remove_duplicate=False)), **dict(operator.named_buffers())}


@contextmanager
def as_in_forward(operator: Any, state: dict[str, Tensor]) -> Iterator[None]:
    """The operator with the parameters and buffers of :func:`call_state` at its forward call, and its running
    statistics frozen: what a backward pass that applies T again must see. After ``functional_call`` has returned
    the module holds its own parameters again; without this, IFT's and Neumann's J products would use those."""
    current = call_state(operator)
    swapped = any(current.get(name) is not tensor for name, tensor in state.items())
    with frozen_running_stats(operator), _reparametrize_module(operator, state) if swapped else nullcontext():
        yield
