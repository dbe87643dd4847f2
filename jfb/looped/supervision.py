"""Deep supervision (HRM, TRM): a batch solved in segments, each from the previous segment's detached state.

HRM and TRM train a recurrent core by running it in N segments per batch; each segment starts where the previous
one ended (its output, the state the loss saw), detached (no gradient crosses segments), and gets a loss and an
optimiser step of its own. HRM's "one-step gradient" is JFB; ``backward="phantom:K"`` or ``"unroll"`` gives k-step
ones. :func:`segments` yields each segment's :class:`~jfb.Equilibrium`; the loop around it (a loss per segment, a step
per segment or one for all, stopping early on a halting signal) stays the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..binding import InitialState
from ..equilibrium import Equilibrium
from ..errors import JfbError
from ..layer import ImplicitLayer
from ..state import map_state
from .starts import solve_function


def segments(
    model: ImplicitLayer | Callable,
    x: Any,
    count: int,
    *,
    u0: InitialState = None,
    latent_shape: Any = None,
    **settings: Any,
) -> Iterator[Equilibrium]:
    """Solve ``x`` ``count`` times, each solve starting from the previous one's output, detached.

    Args:
        model: an :class:`~jfb.ImplicitLayer` (its own settings) or an operator ``T(u, x)`` with
            :func:`jfb.fixed_point`'s keywords (``solver=``, ``tol=``, ``max_iter=``, ``backward=`` ...): a segment
            is one such solve (HRM: a fixed number of steps, ``tol=None, max_iter=K``).
        count: the number of segments (at most: stop iterating to end early).
        u0: the first segment's start.

    Example (a loss and an optimiser step per segment, as HRM)::

        for segment in jfb.looped.segments(layer, x, 8):
            loss = criterion(head(segment.value), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise JfbError(f"segments: count must be an integer >= 1, got {count!r}")
    solve = solve_function(model, latent_shape, settings)
    state = u0
    for _ in range(count):
        result = solve(x, state)
        yield result
        state = map_state(lambda t: t.detach(), result.value)  # where the loss saw it; no gradient crosses segments
