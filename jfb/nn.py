"""Building blocks for operators that must stay one function during a layer call: DEQ dropout and weight norms.

A fixed point exists only if T is the same map at every iteration. Ordinary dropout draws a new mask on every
call of T, and torch's spectral norm takes a power-iteration step on every call in training mode; both change
T between iterations. The modules here key their state on the **layer call** T is evaluated for (one solve and
every application of T its backward pass makes later, :data:`jfb.binding.CURRENT_CALL`):

- :class:`VariationalDropout` (and :class:`VariationalDropout2d`, one mask per sample and channel): one mask
  per call, used at every iteration and in every backward re-application of T; off in eval mode.
- :func:`weight_norm`: ``w = g v / ||v||`` per output unit, ``g`` learnable and optionally clipped to a bound.
- :func:`spectral_norm`: ``w = g W / sigma(W)``, ``sigma`` from one power iteration per call (done at the
  call's first evaluation of T, so the solve and the output's application use the same ``sigma``).

The normalised weights are parametrisations (``torch.nn.utils.parametrize``): during a solve the layer holds
them cached (computed once for all the solve's iterations) and each application of T with grad computes them
once, so gradients reach the raw ``v`` / ``W`` and the scale ``g``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .binding import CURRENT_CALL
from .errors import JfbError

#: per-call state kept for this many recent calls (a model may call several layers before one backward pass)
_CALLS_KEPT = 8


class _PerCall:
    """A small map from recent layer calls to what a module drew for them."""

    def __init__(self) -> None:
        self.entries: OrderedDict[object, Tensor] = OrderedDict()

    def get(self, call: object) -> Tensor | None:
        return None if call is None else self.entries.get(call)

    def put(self, call: object, value: Tensor) -> None:
        if call is None:
            return
        self.entries[call] = value
        while len(self.entries) > _CALLS_KEPT:
            self.entries.popitem(last=False)


class VariationalDropout(nn.Module):
    """Dropout with one mask per layer call (per sample and feature), scaled by ``1 / (1 - p)``; identity in eval.

    Outside a layer call (the module called directly) every call draws a new mask. Within a call the batch
    must keep its size: with ``freeze_converged`` a solve evaluates only some rows, which a per-sample mask
    cannot follow (a JfbError says so).
    """

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise JfbError(f"dropout probability p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self._masks = _PerCall()

    reads_current_call = True  # (one mask per layer call, keyed on the call jfb.binding sets)

    def mask_shape(self, x: Tensor) -> tuple[int, ...]:
        return tuple(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        call = CURRENT_CALL.get()
        mask = self._masks.get(call)
        if mask is None:
            keep = 1 - self.p
            mask = torch.empty(self.mask_shape(x), dtype=x.dtype, device=x.device).bernoulli_(keep) / keep
            self._masks.put(call, mask)
        elif mask.shape[0] != x.shape[0]:
            raise JfbError(
                f"{type(self).__name__} drew its mask for {mask.shape[0]} samples in this call and got {x.shape[0]}: "
                "one mask per call needs every row at every iteration (set freeze_converged=False)"
            )
        return x * mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class VariationalDropout2d(VariationalDropout):
    """:class:`VariationalDropout` with one mask entry per sample and channel of ``(N, C, H, W)`` feature maps."""

    def mask_shape(self, x: Tensor) -> tuple[int, ...]:
        if x.dim() < 3:
            raise JfbError(f"VariationalDropout2d expects (N, C, ...) feature maps, got shape {tuple(x.shape)}")
        return (*x.shape[:2], *(1,) * (x.dim() - 2))


class _Scale(nn.Module):
    """A per-output-unit scale ``g``, learnable or fixed, optionally clipped to at most ``clip``."""

    def __init__(self, initial: Tensor, learnable: bool, clip: float | None) -> None:
        super().__init__()
        if clip is not None and not clip > 0:
            raise JfbError(f"clip must be a number > 0 or None, got {clip!r}")
        self.clip = clip
        if learnable:
            self.scale = nn.Parameter(initial.detach().clone())
        else:
            self.register_buffer("scale", initial.detach().clone())

    def value(self) -> Tensor:
        return self.scale if self.clip is None else self.scale.clamp(max=self.clip)


class WeightNorm(_Scale):
    """Parametrisation ``w = g * v / ||v||`` (norm over all dimensions but the first)."""

    def forward(self, v: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(v.flatten(1), dim=1).clamp_min(1e-12)
        return v * (self.value() / norm).reshape(-1, *(1,) * (v.dim() - 1))


class SpectralNorm(_Scale):
    """Parametrisation ``w = g * W / sigma(W)``, ``sigma`` the largest singular value of ``W`` as a
    ``(out, -1)`` matrix, estimated by power iteration: ``steps`` steps per layer call in training mode."""

    reads_current_call = True  # (one power iteration per layer call, keyed on the call jfb.binding sets)

    def __init__(self, weight: Tensor, learnable: bool, clip: float | None, scale: float, steps: int = 1) -> None:
        super().__init__(torch.tensor(float(scale), dtype=weight.dtype, device=weight.device), learnable, clip)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise JfbError(f"n_power_iterations must be an integer >= 1, got {steps!r}")
        self.steps = steps
        matrix = weight.detach().flatten(1)
        generator = torch.Generator(device="cpu").manual_seed(0)
        u = torch.randn(matrix.shape[0], generator=generator, dtype=weight.dtype).to(weight.device)
        v = torch.randn(matrix.shape[1], generator=generator, dtype=weight.dtype).to(weight.device)
        self.register_buffer("u", nn.functional.normalize(u, dim=0))
        self.register_buffer("v", nn.functional.normalize(v, dim=0))
        self.iterating, self._iterated = True, _PerCall()
        with torch.no_grad():
            for _ in range(15):
                self._power_step(matrix)

    def train(self, mode: bool = True) -> SpectralNorm:
        """``iterating`` follows train()/eval() only: a solve holds ``training`` off, and the power step of
        the call must still happen at its first evaluation."""
        self.iterating = mode
        return super().train(mode)

    @torch.no_grad()
    def _power_step(self, matrix: Tensor) -> None:
        self.v.copy_(nn.functional.normalize(matrix.T @ self.u, dim=0))
        self.u.copy_(nn.functional.normalize(matrix @ self.v, dim=0))

    def forward(self, weight: Tensor) -> Tensor:
        matrix = weight.flatten(1)
        call = CURRENT_CALL.get()
        if self.iterating and (call is None or self._iterated.get(call) is None):
            for _ in range(self.steps):
                self._power_step(matrix.detach())
            self._iterated.put(call, self.u)
        sigma = self.u.clone() @ matrix @ self.v.clone()  # clones: a later call's power step must not change this graph
        return weight * (self.value() / sigma)


def weight_norm(module: nn.Module, name: str = "weight", *, learn_scale: bool = True, clip: float | None = None):
    """Reparametrise ``module.<name>`` as ``g v / ||v||`` (per output unit; ``g`` starts at ``||v||``, so the
    weight is unchanged at first). ``clip``: ``g`` is clamped to at most this in every use. Returns ``module``."""
    weight = getattr(module, name)
    initial = torch.linalg.vector_norm(weight.detach().flatten(1), dim=1)
    parametrize.register_parametrization(module, name, WeightNorm(initial, learn_scale, clip))
    return module


def spectral_norm(
    module: nn.Module,
    name: str = "weight",
    *,
    scale: float = 1.0,
    learn_scale: bool = False,
    clip: float | None = None,
    n_power_iterations: int = 1,
):
    """Reparametrise ``module.<name>`` as ``g W / sigma(W)`` (``g = scale``, learnable with ``learn_scale``,
    clamped to at most ``clip``): a weight of spectral norm ``g`` as a matrix; ``n_power_iterations`` steps per
    layer call. Returns ``module``."""
    weight = getattr(module, name)
    steps = SpectralNorm(weight, learn_scale, clip, scale, n_power_iterations)
    parametrize.register_parametrization(module, name, steps)
    return module


__all__ = [
    "SpectralNorm",
    "VariationalDropout",
    "VariationalDropout2d",
    "WeightNorm",
    "spectral_norm",
    "weight_norm",
]
