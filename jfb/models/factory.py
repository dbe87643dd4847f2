"""Build a network from an architecture: fresh ``(Q, R, S)`` parts, composed implicitly or explicitly."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import JfbError
from .architectures import Architecture, architecture
from .blocks import ConvLinearHead, ConvPoolEmbedding, InitialStatePredictor, LatentOperator, ResNetEmbedding
from .networks import ExplicitClassifier, ImplicitClassifier

MODEL_KINDS = ("implicit", "explicit")


def build_parts(
    arch: str | Architecture,
    latent_batch_norm: bool = True,
    gamma: float | None = None,
    latent_dropout: float = 0.0,
    latent_norm: str = "none",
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Fresh ``(Q, R, S)`` for an architecture (``gamma`` overrides the architecture's; ``latent_dropout`` and
    ``latent_norm`` go to :class:`~jfb.models.blocks.LatentOperator`)."""
    a = architecture(arch) if isinstance(arch, str) else arch
    if a.embedding == "convpool":
        embedding: nn.Module = ConvPoolEmbedding([a.in_channels, *a.widths], a.pools)
    else:
        embedding = ResNetEmbedding(a.in_channels, list(a.widths))
    channels = a.widths[-1]
    operator = LatentOperator(
        channels,
        a.latent_blocks,
        gamma or a.gamma,
        batch_norm=latent_batch_norm,
        double_activation=a.double_activation,
        dropout=latent_dropout,
        norm=latent_norm,
    )
    head = ConvLinearHead(channels, a.head_channels, a.latent_side, a.classes, a.head_padding, a.dropout)
    return embedding, operator, head


def build_model(
    arch: str,
    kind: str = "implicit",
    explicit_depth: int = 3,
    latent_batch_norm: bool = True,
    gamma: float | None = None,
    init: str = "zeros",
    latent_dropout: float = 0.0,
    latent_norm: str = "none",
    **layer_options: Any,
) -> nn.Module:
    """An implicit network (``layer_options`` go to :class:`~jfb.ImplicitLayer`) or its explicit twin.

    ``init``: the initial state of each solve, ``zeros``, ``random``, ``mixed``, or ``learned`` (an
    :class:`~jfb.models.blocks.InitialStatePredictor`, Skip-DEQ)."""
    if kind not in MODEL_KINDS:
        raise JfbError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    parts = build_parts(arch, latent_batch_norm, gamma, latent_dropout, latent_norm)
    shape = architecture(arch).input_shape
    if kind == "explicit":
        return ExplicitClassifier(*parts, depth=explicit_depth, input_shape=shape)
    start = InitialStatePredictor(architecture(arch).widths[-1]) if init == "learned" else init
    return ImplicitClassifier(*parts, input_shape=shape, init=start, **layer_options)
