"""What a causal DEQ model offers :func:`jfb.decoding.generate`: the :class:`CausalDeq` methods, and the
:class:`KVCache` of an attention block's equilibria; the check that refuses an operator that is not causal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import JfbError

Operator = Callable[[Any, Any], Any]


@dataclass
class KVCache:
    """Keys and values of the equilibria of each row's positions so far: ``(batch, heads, context, head_dim)``
    each, and ``lengths`` (per row, the positions held; the rest is masked)."""

    keys: Tensor
    values: Tensor
    lengths: Tensor

    @classmethod
    def empty(cls, batch: int, heads: int, context: int, head_dim: int, like: Tensor) -> KVCache:
        keys = like.new_zeros(batch, heads, context, head_dim)
        return cls(keys, torch.zeros_like(keys), torch.zeros(batch, dtype=torch.long, device=like.device))

    @property
    def context(self) -> int:
        return self.keys.shape[2]

    def view(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The rows' keys, values and mask of held positions (``(rows, context)``, True where held)."""
        held = torch.arange(self.context, device=self.lengths.device) < self.lengths[rows, None]
        return self.keys[rows], self.values[rows], held

    def put(self, rows: Tensor, keys: Tensor, values: Tensor) -> None:
        """The rows' cache becomes ``keys``/``values`` of positions ``0 .. L-1`` (a solved prompt)."""
        length = keys.shape[2]
        self.keys[rows, :, :length], self.values[rows, :, :length] = keys, values
        self.lengths[rows] = length

    def append(self, rows: Tensor, keys: Tensor, values: Tensor) -> None:
        """Add one position (``keys``/``values`` of shape ``(rows, heads, 1, head_dim)``) to each of the rows."""
        at = self.lengths[rows]
        self.keys[rows, :, at], self.values[rows, :, at] = keys[:, :, 0], values[:, :, 0]
        self.lengths[rows] = at + 1


@runtime_checkable
class CausalDeq(Protocol):
    """What :func:`generate` needs of a model whose states are ``(batch, positions, ...)``.

    ``prompt_problem(tokens)``: ``(T, x)`` of the whole causal solve of ``tokens`` ``(rows, L)`` at positions
    ``0 .. L-1`` (the state starts at zeros like ``x``'s first tensor); ``new_cache(batch, like)``: an empty
    cache with a ``lengths`` tensor (a :class:`KVCache`); ``store(cache, rows, u, x)``: the rows' cache from
    their prompt's equilibrium; ``token_problem(cache, rows, tokens)``: ``(T, x)`` of one new position per row
    (``x`` batch-first, the cache's rows inside it: converged rows are sliced off as the solve goes);
    ``append(cache, rows, u, x)``: add the new position's equilibrium; ``read_out(u)``: logits from states.
    """

    context: int

    def prompt_problem(self, tokens: Tensor) -> tuple[Operator, Any]: ...

    def new_cache(self, batch: int, like: Tensor) -> Any: ...

    def store(self, cache: Any, rows: Tensor, u: Tensor, x: Any) -> None: ...

    def token_problem(self, cache: Any, rows: Tensor, tokens: Tensor) -> tuple[Operator, Any]: ...

    def append(self, cache: Any, rows: Tensor, u: Tensor, x: Any) -> None: ...

    def read_out(self, u: Tensor) -> Tensor: ...


CAUSAL_DEQ_METHODS = ("prompt_problem", "new_cache", "store", "token_problem", "append", "read_out")


def check_causal(operator: Operator, x: Any, like: Tensor) -> None:
    """JfbError unless ``T(u; x)`` at positions ``0 .. L-2`` is independent of ``u`` at position ``L-1``
    (one vector-Jacobian product: a random vector at a random state, from a generator of its own, so the global
    random state is untouched): a cache of earlier equilibria is exact only for a causal operator."""
    generator = torch.Generator(device=like.device).manual_seed(0)

    def draw(shape: torch.Size) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)

    with torch.enable_grad():
        u = draw(like.shape).requires_grad_(True)
        earlier = operator(u, x)[:, :-1]
        # a random cotangent: a sum would vanish through a final LayerNorm (its outputs sum to a constant)
        (grad,) = torch.autograd.grad(earlier, u, draw(earlier.shape))
    leak, scale = grad[:, -1].abs().max().item(), grad.abs().max().item()
    if leak > 1e-6 * max(scale, 1e-30):
        raise JfbError(
            f"generate needs a causal operator: T's output at earlier positions depends on the last position's "
            f"state (|dT/du| up to {leak:.2e}), so a cache of earlier equilibria would be wrong"
        )
