"""Shared building blocks of the paper's networks: embeddings Q, latent operators R, heads S."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..contraction import GammaScaled, rescale_to_lipschitz
from ..errors import JfbError, unknown_name
from ..nn import VariationalDropout2d, spectral_norm, weight_norm

ACTIVATION_SLOPE = 0.1
LATENT_NORMS = ("none", "weight", "spectral")


def conv3x3(c_in: int, c_out: int, stride: int = 1, bias: bool = True, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=padding, bias=bias)


def activation() -> nn.Module:
    return nn.LeakyReLU(ACTIVATION_SLOPE)


class ConvPoolEmbedding(nn.Module):
    """Q for MNIST: (conv 3x3 -> BatchNorm -> LeakyReLU -> max-pool of ``pools[i]``, none when 1) per stage."""

    def __init__(self, channels: list[int], pools: tuple[int, ...] = (2, 2)) -> None:
        super().__init__()
        if len(pools) != len(channels) - 1:
            raise JfbError(f"one pooling size per stage: {len(channels) - 1} stages, pools {pools}")
        self.stages = nn.ModuleList(
            nn.Sequential(
                conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), activation(), *([nn.MaxPool2d(pool)] if pool > 1 else [])
            )
            for c_in, c_out, pool in zip(channels, channels[1:], pools)
        )

    def forward(self, d: Tensor) -> Tensor:
        for stage in self.stages:
            d = stage(d)
        return d


class ResidualStage(nn.Module):
    """A basic ResNet block; the shortcut is parameter-free when shapes change: subsample by the stride
    and add zero channels, half before and half after the existing ones."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = activation()
        self.stride, self.extra_channels = stride, c_out - c_in

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        shortcut = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:  # zero channels on both sides, as in the authors' (and the CIFAR ResNets') "option A"
            front = self.extra_channels // 2
            shortcut = nn.functional.pad(shortcut, (0, 0, 0, 0, front, self.extra_channels - front))
        return self.act(out + shortcut)


class ResNetEmbedding(nn.Module):
    """Q for SVHN / CIFAR-10: conv stem, then residual stages (stride 2 whenever the width grows)."""

    def __init__(self, in_channels: int, widths: list[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv3x3(in_channels, widths[0], bias=False), nn.BatchNorm2d(widths[0]), activation())
        self.stages = nn.Sequential(
            *(
                ResidualStage(c_in, c_out, 1 if c_in == c_out else 2)
                for c_in, c_out in zip([widths[0], *widths[:-1]], widths)
            )
        )

    def forward(self, d: Tensor) -> Tensor:
        return self.stages(self.stem(d))


class LatentBlock(nn.Module):
    """One residual branch of R: conv -> LeakyReLU -> conv -> LeakyReLU (twice with ``double_activation``,
    as in the authors' published models: negative values then scaled by the slope squared)."""

    def __init__(self, channels: int, double_activation: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)
        self.act = activation()
        self.drop = VariationalDropout2d(dropout) if dropout else nn.Identity()
        self.double_activation = double_activation

    def forward(self, z: Tensor) -> Tensor:
        out = self.act(self.conv2(self.drop(self.act(self.conv1(z)))))
        return self.act(out) if self.double_activation else out


class LatentOperator(GammaScaled):
    """T(u, q) = gamma * z_k with z_0 = u + q and z_i = N_i(z_{i-1} + B_i(z_{i-1})).

    Each block adds its residual branch and normalises with a BatchNorm without affine
    parameters (BatchNorm inside T, as in the paper); ``gamma`` in (0, 1] scales the output.
    ``dropout``: variational dropout (one mask per layer call) between each block's convolutions;
    ``norm``: ``weight`` or ``spectral`` normalisation of the latent convolutions (:mod:`jfb.nn`).
    """

    def __init__(
        self,
        channels: int,
        blocks: int,
        gamma: float,
        batch_norm: bool = True,
        double_activation: bool = False,
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__(None, gamma, max_gamma=1.0)
        self.blocks = nn.ModuleList(LatentBlock(channels, double_activation, dropout) for _ in range(blocks))
        if norm not in LATENT_NORMS:
            raise unknown_name("latent norm", norm, LATENT_NORMS)
        for conv in (conv for block in self.blocks for conv in (block.conv1, block.conv2)):
            if norm == "weight":
                weight_norm(conv)
            elif norm == "spectral":
                spectral_norm(conv)
        self.norms = nn.ModuleList(
            (nn.BatchNorm2d(channels, affine=False) if batch_norm else nn.Identity()) for _ in range(blocks)
        )

    def branch(self, u: Tensor, q: Tensor) -> Tensor:
        z = u + q
        for block, norm in zip(self.blocks, self.norms):
            z = norm(z + block(z))
        return z

    def rescale_to_lipschitz(self, u: Tensor, q: Tensor) -> tuple[float, float]:
        """The paper's contraction control (Jacobian-based runs): every latent conv times
        ``(gamma / ratio) ** (1 / blocks)`` when the measured ratio exceeds gamma."""
        convs = [conv for block in self.blocks for conv in (block.conv1, block.conv2)]
        return rescale_to_lipschitz(self, u, q, self.gamma, convs, power=1 / len(self.blocks))


class ConvLinearHead(nn.Module):
    """S: conv 3x3 to a few channels -> LeakyReLU -> dropout -> linear classifier (no bias)."""

    def __init__(
        self, channels: int, head_channels: int, spatial: int, classes: int, padding: int, dropout: float
    ) -> None:
        super().__init__()
        self.conv = conv3x3(channels, head_channels, padding=padding)
        self.act = activation()
        self.dropout = nn.Dropout(dropout)
        out_side = spatial + 2 * padding - 2
        self.fc = nn.Linear(head_channels * out_side * out_side, classes, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.flatten(self.act(self.conv(u)), 1)))


class InitialStatePredictor(nn.Module):
    """``g(q)``: an explicit guess of the fixed point from the injection (Skip-DEQ, Pal et al. 2022):
    conv 3x3 -> LeakyReLU -> conv 1x1 on the latent channels. It sees ``q`` detached: its own loss trains it,
    and the classifier's embedding is not bent towards easy guesses."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(conv3x3(channels, channels), activation(), nn.Conv2d(channels, channels, 1))

    def forward(self, q: Tensor) -> Tensor:
        return self.net(q.detach())
