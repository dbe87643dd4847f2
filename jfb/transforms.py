"""The boundary between ``torch.func`` transforms (vmap, grad, jvp and what is built on them) and the solve loops.

Inside a transform the tensors T sees are functorch wrappers: a ``vmap`` hides a batch dimension, ``grad`` and
``jvp`` carry derivatives. The graph-free forward solve needs neither: :class:`Boundary` peels a flat state down to
the plain tensor underneath (every vmapped dimension folded into the batch, derivatives dropped), the solver and
its bookkeeping run on that, and each evaluation of T sees the state wrapped again in the vmapped dimensions.
Stopping decisions read through the wrappers with :func:`scalar`: under ``vmap`` one decision is made for all
vmapped problems together, by the largest value (every problem meets the tolerance before the loop stops).

This uses functorch's private wrapping functions (``torch._C._functorch``), in this one module only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch._C import _functorch as functorch
from torch._C._functorch import TransformType
from torch._functorch import pyfunctorch

from .errors import JfbError

#: the transforms a backward mode may declare it supports (:attr:`jfb.backward.BackwardMode.transforms`)
TRANSFORMS = ("vmap", "grad", "jvp")
_NAMES = {TransformType.Vmap: "vmap", TransformType.Grad: "grad", TransformType.Jvp: "jvp"}


def active() -> bool:
    """Whether the code runs inside a ``torch.func`` transform (never while dynamo traces: a compiled region
    sees plain tensors)."""
    return not torch.compiler.is_compiling() and functorch.peek_interpreter_stack() is not None


def active_transforms() -> set[str]:
    """The kinds of ``torch.func`` transform the code runs inside (``vmap``, ``grad``, ``jvp``)."""
    kinds = set()
    for interpreter in functorch.get_interpreter_stack() or ():
        if interpreter.key() not in _NAMES:
            raise JfbError(f"the solve cannot run inside torch.func transform {interpreter.key().name}")
        kinds.add(_NAMES[interpreter.key()])
    return kinds


@dataclass(frozen=True)
class _Level:
    kind: str
    level: int
    size: int  # the vmapped dimension's size (vmap only)


class Boundary:
    """The transforms active now; the solve runs :meth:`outside` them, on the tensors :meth:`peel` gives, and
    evaluates T :meth:`inside` them on the state :meth:`wrap` gives (flat ``(batch, features)`` states).

    Outside, functorch does not see the solver's arithmetic at all: no wrapping of the tensors it creates (under
    ``grad`` and ``jvp`` even ``torch.zeros`` would be wrapped), no batching rules to miss for in-place updates.
    """

    def __init__(self) -> None:
        levels = []
        for interpreter in functorch.get_interpreter_stack() or ():
            kind = _NAMES[interpreter.key()]
            size = pyfunctorch.coerce_cinterpreter(interpreter).batch_size() if kind == "vmap" else 0
            levels.append(_Level(kind, interpreter.level(), size))
        self.levels = sorted(levels, key=lambda lv: lv.level)  # outermost first
        self.sizes = [lv.size for lv in self.levels if lv.kind == "vmap"]
        self.stack: list | None = None

    @classmethod
    def current(cls) -> Boundary | None:
        """The boundary of the transforms active now, or None outside any."""
        return cls() if active() else None

    @contextmanager
    def outside(self) -> Iterator[None]:
        """The transforms set aside (the interpreter stack cleared) for the block."""
        with pyfunctorch.temporarily_clear_interpreter_stack() as stack:
            self.stack = stack
            yield

    @contextmanager
    def inside(self) -> Iterator[None]:
        """Back inside the transforms, from within :meth:`outside` (to evaluate T)."""
        with pyfunctorch.temporarily_restore_interpreter_stack(self.stack):
            yield

    def solve_outside(
        self,
        solve: Callable[[Callable, Tensor, Callable | None], tuple[Tensor, Any, Any]],
        F: Callable[[Tensor, Tensor | None], Tensor],
        x0: Tensor,
        observe: Callable[[Tensor], None] | None,
    ) -> tuple[Tensor, Any, Any]:
        """``solve(G, u0, seen)`` run outside the transforms on the plain tensors (the vmapped problems folded into
        the batch), ``G`` evaluating ``F`` inside them on the state wrapped again; ``u*`` returned wrapped."""

        def peeled(u: Tensor, index: Tensor | None) -> Tensor:
            wrapped = self.wrap(u)
            with self.inside():
                out = F(wrapped, None)
            return self.peel(out)

        seen = None if observe is None else lambda u: observe(self.wrap(u))
        with self.outside():
            u_star, stats, trace = solve(peeled, self.peel(x0), seen)
            return self.wrap(u_star), stats, trace

    def peel(self, t: Tensor, keep_graph: bool = False) -> Tensor:
        """The plain tensor under ``t``: vmapped dimensions folded into the batch (in front), the transforms'
        derivatives dropped (and ordinary autograd's too, unless ``keep_graph``).

        Levels are taken off from the innermost, each with the transforms above it set aside and those below it
        active, where the tensor's dimensions are what they say. A tensor not batched at some vmap level (a state
        of zeros, a point of an enclosing vmap) is expanded along it."""
        with ExitStack() as levels:
            if not active():
                levels.enter_context(pyfunctorch.temporarily_restore_interpreter_stack(self.stack))
            for lv in reversed(self.levels):  # innermost first
                levels.enter_context(pyfunctorch.temporarily_pop_interpreter_stack())
                if lv.kind == "vmap":
                    t, dim = functorch._unwrap_batched(t, lv.level)
                    t = t.unsqueeze(0).expand(lv.size, *t.shape) if dim is None else t.movedim(dim, 0)
                else:
                    t = functorch._unwrap_for_grad(t, lv.level)
            t = functorch.unwrap_if_dead(t)
            t = t if keep_graph else t.detach()
            return t.reshape(-1, *t.shape[len(self.sizes) + 1 :])

    def wrap(self, t: Tensor) -> Tensor:
        """Inverse of :meth:`peel` for the vmapped dimensions (no derivatives: a solver's point carries none).
        Call it outside."""
        t = t.reshape(*self.sizes, -1, *t.shape[1:])
        for lv in self.levels:  # outermost first
            if lv.kind == "vmap":
                t = functorch._add_batch_dim(t, 0, lv.level)
        return t


def plain(t: Tensor) -> Tensor:
    """The values under any functorch wrappers of ``t`` (vmapped dimensions in front), without derivatives."""
    while functorch.is_functorch_wrapped_tensor(t):
        level = functorch.maybe_get_level(t)
        if functorch.is_batchedtensor(t):
            t, dim = functorch._unwrap_batched(t, level)
            t = t.movedim(dim, 0) if dim is not None else t
        else:
            t = functorch._unwrap_for_grad(t, level)
    return t.detach()


def scalar(t: Tensor) -> float:
    """``float(t)`` for a stopping decision, also inside a transform (under vmap: the largest over the problems)."""
    if functorch.is_functorch_wrapped_tensor(t):
        return float(plain(t).max())
    return float(t)


def derivative_levels() -> list[int]:
    """The levels of the ``grad`` and ``jvp`` transforms active now."""
    if not active():
        return []
    return [i.level() for i in functorch.get_interpreter_stack() or () if i.key() != TransformType.Vmap]


def forward_over_reverse() -> bool:
    """Whether the innermost derivative transform is a ``grad`` with exactly one ``jvp`` outside it and no other
    ``grad``: the second derivative of ``torch.func.hessian`` (``jacfwd`` of ``jacrev``)."""
    if not active():
        return False
    kinds = [i.key() for i in sorted(functorch.get_interpreter_stack(), key=lambda i: i.level()) if i.key() in _NAMES]
    derivatives = [kind for kind in kinds if kind != TransformType.Vmap]
    return derivatives == [TransformType.Jvp, TransformType.Grad] and kinds[-1] == TransformType.Grad


def reverse_detached(t: Tensor) -> Tensor:
    """``t`` without its history at the innermost transform, a ``grad`` (its reverse-mode derivative), with its
    tangents at the transforms outside kept (a ``jvp``'s: forward-over-reverse second derivatives)."""
    level = functorch.peek_interpreter_stack().level()
    with pyfunctorch.temporarily_pop_interpreter_stack():
        inner = functorch._unwrap_for_grad(t, level)
    return functorch._wrap_for_grad(inner, level)


class InnerLayers:
    """The transforms active where it is made, to be put back inside a rule that functorch runs at a lower level
    (a ``jvp`` rule runs below the ``grad`` levels inside it, where tensors wrapped at those levels may not be used)."""

    def __init__(self) -> None:
        with pyfunctorch.temporarily_clear_interpreter_stack() as layers:
            self.layers = layers  # innermost first; a transform's level is its depth in the stack

    @contextmanager
    def restored(self) -> Iterator[None]:
        top = functorch.peek_interpreter_stack()
        depth = 0 if top is None else top.level()
        with pyfunctorch.temporarily_restore_interpreter_stack(self.layers[: len(self.layers) - depth]):
            yield


def differentiated_check(create_graph_counts: bool = True) -> Callable[[], bool]:
    """Made where a custom derivative rule is attached; called inside the rule (a backward pass, a tangent): whether
    what the rule computes is itself differentiated (a second derivative).

    With torch.func that is a ``grad`` or ``jvp`` level outside the one the rule computes (the innermost level
    active where it was attached: a rule sees its own level too, under ``grad``, and the vmapped basis of ``jacrev``
    or ``jacfwd`` adds none); with plain autograd, a backward pass with ``create_graph=True`` (grad mode on in the
    rule), when ``create_graph_counts``.
    """
    own = max(derivative_levels(), default=None)
    if own is None:
        return torch.is_grad_enabled if create_graph_counts else lambda: False
    return lambda: any(level < own for level in derivative_levels())


def refuse_unsupported(mode: Any, modes: Any, regularized: bool) -> None:
    """JfbError in one line for what cannot run inside the transforms active now: a backward ``mode`` whose
    ``transforms`` lack one (naming those of the registry ``modes`` that have them all), or the regularisers."""
    kinds = active_transforms()
    missing = kinds - mode.transforms
    if missing:
        able = modes.usages(lambda factory: kinds <= getattr(factory, "transforms", set()))
        names = ", ".join(f"torch.func {kind}" for kind in sorted(missing))
        raise JfbError(f"backward {mode!r} does not run under {names}; use one of {', '.join(able)}")
    if regularized:
        raise JfbError(
            "the Jacobian penalty and the fixed-point correction (jacobian_probes=, correction=) do not run inside "
            "torch.func transforms; set them to 0 for the transformed calls (layer.eval() turns them off)"
        )
