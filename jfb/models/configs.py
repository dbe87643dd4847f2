"""The paper's networks, all from the same blocks; one table entry per architecture.

Parameter counts (trainable): ``mnist`` 54,352 (paper: 54K), ``svhn`` 163,488 (paper: 164K),
``cifar10`` 844,792 (paper: 0.84M). The authors' published checkpoints have architectures of their
own, stated operation by operation in ``../shared/reference/README.md``: ``mnist-reference`` 35,856
(one latent block, one 3x3/3 max-pool, a head conv without padding), ``svhn-reference`` and
``cifar10-reference`` 163,488 (the SVHN topology; CIFAR-10 with ImageNet input statistics); all three
apply the activation twice after the second latent convolution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

from torch import nn

from .blocks import ConvLinearHead, ConvPoolEmbedding, LatentOperator, ResNetEmbedding
from .networks import ExplicitClassifier, ImplicitClassifier
from ..errors import JfbError


@dataclass(frozen=True)
class Architecture:
    in_channels: int
    embedding: str  # "convpool" or "resnet"
    widths: tuple[int, ...]  # embedding output widths; the last one is the latent width
    latent_blocks: int
    latent_side: int  # spatial size of the latent state
    head_padding: int
    head_channels: int = 16
    gamma: float = 0.9
    dropout: float = 0.1
    classes: int = 10
    pools: tuple[int, ...] = (2, 2)  # "convpool": max-pool kernel (= stride) after each stage; 1 = none
    image_side: Optional[int] = None  # default: 4 * latent_side (two poolings by 2 or two stride-2 stages)
    double_activation: bool = False  # the activation applied twice after each latent block's second conv
    normalization: Optional[tuple[tuple[float, ...], tuple[float, ...]]] = None  # input (mean, std); default the dataset's

    @property
    def input_shape(self) -> tuple[int, int, int]:
        side = self.image_side or 4 * self.latent_side
        return (self.in_channels, side, side)


ARCHITECTURES: dict[str, Architecture] = {
    "mnist": Architecture(1, "convpool", (16, 32), latent_blocks=2, latent_side=7, head_padding=1),
    "svhn": Architecture(3, "resnet", (16, 32, 64), latent_blocks=1, latent_side=8, head_padding=0),
    "cifar10": Architecture(3, "resnet", (48, 96, 140), latent_blocks=1, latent_side=8, head_padding=0),
    "mnist-reference": Architecture(1, "convpool", (16, 32), latent_blocks=1, latent_side=9, head_padding=0, pools=(3, 1),
                                    image_side=28, double_activation=True),
    "svhn-reference": Architecture(3, "resnet", (16, 32, 64), latent_blocks=1, latent_side=8, head_padding=0, double_activation=True),
    "cifar10-reference": Architecture(3, "resnet", (16, 32, 64), latent_blocks=1, latent_side=8, head_padding=0, double_activation=True,
                                      normalization=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
}
MODEL_KINDS = ("implicit", "explicit")


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise JfbError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_parts(arch: Union[str, Architecture], latent_batch_norm: bool = True, gamma: Optional[float] = None) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Fresh ``(Q, R, S)`` for an architecture (``gamma`` overrides the architecture's)."""
    a = architecture(arch) if isinstance(arch, str) else arch
    if a.embedding == "convpool":
        embedding: nn.Module = ConvPoolEmbedding([a.in_channels, *a.widths], a.pools)
    else:
        embedding = ResNetEmbedding(a.in_channels, list(a.widths))
    channels = a.widths[-1]
    operator = LatentOperator(channels, a.latent_blocks, gamma or a.gamma, batch_norm=latent_batch_norm, double_activation=a.double_activation)
    head = ConvLinearHead(channels, a.head_channels, a.latent_side, a.classes, a.head_padding, a.dropout)
    return embedding, operator, head


def build_model(
    arch: str, kind: str = "implicit", explicit_depth: int = 3, latent_batch_norm: bool = True, gamma: Optional[float] = None,
    **layer_options: Any
) -> nn.Module:
    """An implicit network (``layer_options`` go to :class:`~jfb.ImplicitLayer`) or its explicit twin."""
    if kind not in MODEL_KINDS:
        raise JfbError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    parts = build_parts(arch, latent_batch_norm, gamma)
    shape = architecture(arch).input_shape
    if kind == "explicit":
        return ExplicitClassifier(*parts, depth=explicit_depth, input_shape=shape)
    return ImplicitClassifier(*parts, input_shape=shape, **layer_options)
