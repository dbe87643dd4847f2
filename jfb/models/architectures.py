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
    image_side: int | None = None  # default: 4 * latent_side (two poolings by 2 or two stride-2 stages)
    double_activation: bool = False  # the activation applied twice after each latent block's second conv
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # input (mean, std); default the dataset's

    @property
    def input_shape(self) -> tuple[int, int, int]:
        side = self.image_side or 4 * self.latent_side
        return (self.in_channels, side, side)


ARCHITECTURES: dict[str, Architecture] = {
    "mnist": Architecture(1, "convpool", (16, 32), latent_blocks=2, latent_side=7, head_padding=1),
    "svhn": Architecture(3, "resnet", (16, 32, 64), latent_blocks=1, latent_side=8, head_padding=0),
    "cifar10": Architecture(3, "resnet", (48, 96, 140), latent_blocks=1, latent_side=8, head_padding=0),
    "mnist-reference": Architecture(
        1,
        "convpool",
        (16, 32),
        latent_blocks=1,
        latent_side=9,
        head_padding=0,
        pools=(3, 1),
        image_side=28,
        double_activation=True,
    ),
    "svhn-reference": Architecture(
        3, "resnet", (16, 32, 64), latent_blocks=1, latent_side=8, head_padding=0, double_activation=True
    ),
    "cifar10-reference": Architecture(
        3,
        "resnet",
        (16, 32, 64),
        latent_blocks=1,
        latent_side=8,
        head_padding=0,
        double_activation=True,
        normalization=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise JfbError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]
