"""The backward-mode interface.

A backward mode turns the graph-free fixed point ``u*`` (flattened to ``(batch, features)``, see
:mod:`jfb.state`) into a tensor that carries gradients: ``attach(T, u_star, stats)`` applies T once
with grad (updating BatchNorm statistics once) and decides what the backward pass does with the
incoming gradient. Every product with the Jacobian ``J = dT/du`` is counted in
``stats.j_matvecs`` when the backward pass runs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import JfbError
from ..registry import Registry
from ..solvers import SolveOptions, SolveStats, solve_flat
from ..status import Status
from ..transforms import Boundary


@dataclass(frozen=True)
class GradientCheck:
    """One measurement of the JFB direction on a training batch (``backward="auto"``).

    ``cosine``: between the JFB and the implicit (IFT) directions, both taken over everything T's output
    depends on with grad (the operator's parameters and the input ``x``); ``descent``: their inner product
    is positive; ``contraction``: a few power-iteration steps' estimate of the spectral radius of
    ``J = dT/du`` at ``u*`` from ``dl/du*`` (above 1: T is not contractive there); ``switched_to``: the mode
    chosen after it; ``seconds``: what the check cost (wall time, GPU work included only up to the point where
    its numbers were read).
    """

    call: int
    mode: str
    cosine: float
    descent: bool
    contraction: float
    switched_to: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BackwardStats:
    """What the backward pass of one call did; filled in when it runs (``status`` is ``not_run`` until then)."""

    #: the mode that attached this call's gradient, e.g. ``ift:fixed_point`` or ``auto(neumann:4)``
    mode: str = ""
    j_matvecs: int = 0
    iterations: int = 0
    relative_residual: float = float("nan")
    status: Status = Status.NOT_RUN
    #: the linear solver that finished a backward solve its first one gave up on (``ift``'s fixed-point iteration
    #: hands a solve that makes no progress to ``gmres``); empty when none did
    fallback: str = ""
    #: T evaluations of the forward solve (set by the layer; ``unroll`` backpropagates through them)
    forward_evals: int = 0
    #: T evaluations made by the backward pass itself (the linearisation for J products)
    t_evals: int = 0
    #: the gradient checks this call's backward pass made (``backward="auto"``: at most one per pass; other modes
    #: make none)
    checks: list[GradientCheck] = field(default_factory=list)


class FixedPointMap:
    """``u -> T(u; x)`` on flat states with the input bound, as handed to a backward mode.

    ``linearization(u_star)`` rebuilds T at ``u*`` with grad for Jacobian products without
    touching running statistics, so the products never run backward through the output's own
    graph (which would add an uncounted gradient with respect to ``u``) and BatchNorm
    statistics are still updated only once, by the output's application of T.
    ``forward_max_iter`` is the depth limit of the forward solve of this call; ``report(subject, stats, detail="")``
    hands a backward pass that failed (``subject``: what, e.g. ``backward linear solve (ift)``) to the layer's
    ``on_failure`` policy;
    ``inputs()`` lists what T's output depends on with grad (the operator's parameters and the input
    tensors that require grad), for modes that compare directions over them. ``trace`` is what the mode's
    own :meth:`BackwardMode.solve` left for its backward pass (the reversible iteration's last pair).
    """

    def __init__(
        self,
        T: Callable[[Tensor], Tensor],
        frozen: Callable[[], AbstractContextManager],
        forward_max_iter: int,
        report: Callable[..., None],
        inputs: Callable[[], list[Tensor]] = list,
        trace: Any = None,
    ) -> None:
        self.T, self.frozen, self.forward_max_iter, self.report = T, frozen, forward_max_iter, report
        self.inputs, self.trace = inputs, trace

    def __call__(self, u: Tensor) -> Tensor:
        return self.T(u)

    def linearization(self, u_star: Tensor, boundary: Boundary | None = None) -> tuple[Tensor, Tensor]:
        """``(z, u)`` with ``z = T(u)``, ``u`` a fresh leaf equal to ``u*``, graph recorded.

        A ``torch.compile``-d operator runs eagerly here: J products may need double backward (CG's
        J v, the Jacobian penalty), which compiled graphs do not support. (Inside a region dynamo is
        tracing, such as a compiled layer, it is traced as it is.) With a ``boundary`` (called outside
        torch.func transforms, :mod:`jfb.transforms`), ``u`` and ``z`` are the plain tensors under the wrappers
        and the graph is ordinary autograd's, recorded through T evaluated inside the transforms.
        """
        eager = nullcontext() if torch.compiler.is_compiling() else torch.compiler.set_stance("force_eager")
        with torch.enable_grad(), self.frozen(), eager:
            if boundary is None:
                u = u_star.detach().requires_grad_()
                return self.T(u), u
            u = boundary.peel(u_star).requires_grad_()
            wrapped = boundary.wrap(u)
            with boundary.inside():
                z = self.T(wrapped)
            return boundary.peel(z, keep_graph=True), u


def refuse_second_order(mode: str, differentiated: bool) -> None:
    """JfbError when the backward pass is itself differentiated (``differentiated``: from a
    :func:`jfb.transforms.differentiated_check` made where the mode attached its gradient).

    A mode whose hook returns a linear solve's result computes it without a graph, so a derivative of
    the gradient would silently miss every term through that solve.
    """
    if differentiated:
        able = BACKWARD_MODES.usages(lambda factory: getattr(factory, "supports_second_order", False))
        raise JfbError(
            f"second derivatives (a backward pass with create_graph=True, or torch.func.hessian) through backward "
            f"{mode!r} are not supported: its gradient is computed outside autograd (a series or a linear solve) and "
            f"would be silently wrong; use one of {', '.join(able)}, which differentiate what they compute"
        )


class BackwardMode:
    """Base class; subclasses set ``name`` and implement :meth:`attach`. What a mode can do is told by its
    capability flags (class attributes), never by lists of names elsewhere."""

    name: str = ""
    #: True when the forward solve itself must record an autograd graph (``unroll``).
    records_forward_graph: bool = False
    #: the solver whose iterations this mode backpropagates through (None: any solver); such a mode owns its
    #: forward solve (:meth:`solve`)
    forward_solver: str | None = None
    #: a backward pass with ``create_graph=True`` differentiates exactly what the mode computes (autograd through
    #: the applications of T it records; for ``ift`` the linear solve is attached as a fixed point of its own)
    supports_second_order: bool = False
    #: safe in a lock-step distributed solve (collectives inside T): every process makes the same calls of T in
    #: the backward pass (not so for a linear solve that stops at its own tolerance on each process)
    lockstep_safe: bool = True
    #: the ``torch.func`` transforms the mode's derivatives are right under (:data:`jfb.transforms.TRANSFORMS`:
    #: ``vmap``, ``grad`` for reverse mode, ``jvp`` for forward mode); a call inside any other is refused. None by
    #: default: a hook or custom gradient is invisible to forward mode, and may not run under vmap
    transforms: frozenset[str] = frozenset()
    #: the statistics of one call: :class:`BackwardStats`, or a subclass with the mode's own fields
    stats_type: type[BackwardStats] = BackwardStats

    def solve(
        self,
        F: Callable[[Tensor, Tensor | None], Tensor],
        x0: Tensor,
        options: SolveOptions,
        agree: Callable[[bool], bool] | None,
        observe: Callable[[Tensor], None] | None,
    ) -> tuple[Tensor, SolveStats, Any]:
        """The forward solve: ``(u*, statistics, trace)``; the trace reaches :meth:`attach` as ``T.trace``.

        The driver runs the options' solver; a mode that inverts its own iteration overrides this.
        """
        u_star, stats = solve_flat(F, x0, options, agree, observe)
        return u_star, stats, None

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: BackwardStats) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What a mode learns while training (the autopilot's level): saved in the layer's ``state_dict``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a stateless mode accepts only an empty state."""
        if state:
            raise JfbError(f"backward mode {self!r} keeps no state, got {sorted(state)}")

    def __repr__(self) -> str:
        return self.name


class GradientOverride(torch.autograd.Function):
    """``out`` unchanged, with the backward pass ``gradients(grad, value)``: the gradients for ``out`` and for each
    of ``inputs`` (None where there is none). ``value`` is this node's output, differentiable, so a backward pass
    with ``create_graph=True`` can build on it (IFT's second derivatives). In forward mode (``torch.func.jvp``)
    the output's tangent is ``tangent(t)`` of ``out``'s tangent ``t`` (None: forward mode is refused). Written in
    torch.func's form (``setup_context``, a generated vmap rule), so every transform can run through it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gradients: Callable, tangent: Callable | None, out: Tensor, *inputs: Tensor) -> Tensor:
        return out.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.gradients, ctx.tangent = inputs[0], inputs[1]
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)  # unused by the tangent; a vmap inside a jvp expects the saved tensors there

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (value,) = ctx.saved_tensors
        return (None, None, *ctx.gradients(grad, value))

    @staticmethod
    def jvp(ctx: Any, _gradients: None, _tangent: None, out_tangent: Tensor, *input_tangents: Any) -> Tensor:
        if ctx.tangent is None:
            raise JfbError("this backward mode has no forward-mode derivative (torch.func.jvp, jacfwd)")
        return ctx.tangent(out_tangent)


def tensors_with_grad(out: Tensor, known: list[Tensor], exclude: Tensor | None = None) -> list[Tensor]:
    """``known`` and every leaf tensor requiring grad that ``out``'s graph reaches without passing through a
    known tensor: what a mode that computes parameter gradients itself must cover (the parameters and
    closed-over tensors of a plain-function operator too)."""
    found = {id(t): t for t in known}
    stops = {t.grad_fn for t in known if t.grad_fn is not None}
    seen, pending = set(), [out.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf
        if variable is not None and variable is not exclude:
            found.setdefault(id(variable), variable)
        pending.extend(next_node for next_node, _ in node.next_functions)
    return list(found.values())


#: every backward mode by name (:func:`jfb.backward.register_backward` adds to it)
BACKWARD_MODES: Registry[BackwardMode] = Registry("backward mode", BackwardMode)
