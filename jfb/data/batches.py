"""Batches: normalised (and, for training with ``augment``, randomly shifted, and mirrored where the
dataset allows) on the fly, on whole batches of tensors, reproducible from any batch index on."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ..errors import JfbError
from .datasets import Augmentation, Split


class Normalizer:
    """uint8 images -> float, shifted and scaled per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std).view(1, -1, 1, 1) * 255)

    def __call__(self, images: Tensor) -> Tensor:
        mean, inv_std = self.mean.to(images.device), self.inv_std.to(images.device)
        return (images.float() - mean) * inv_std


def augment_batch(images: Tensor, generator: torch.Generator, augmentation: Augmentation) -> Tensor:
    """A whole batch at once: zero-pad, random crop per image, horizontal flip with probability 1/2 and a random
    rotation when enabled."""
    padding = augmentation.padding
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(images.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(images.device)  # (n, w)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    out = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    if augmentation.flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return _rotate(out, generator, augmentation.rotation) if augmentation.rotation else out


def _rotate(images: Tensor, generator: torch.Generator, degrees: float) -> Tensor:
    """Each image rotated about its centre by a uniform angle in [-degrees, degrees] (bilinear, zeros outside)."""
    n = images.shape[0]
    angles = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    cos, sin, zero = angles.cos(), angles.sin(), torch.zeros(n)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(images.float(), grid, padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(images.dtype)


def batches(
    split: Split,
    batch_size: int,
    normalize: Normalizer,
    *,
    shuffle_seed: int | None = None,
    augment: Augmentation | None = None,
    start: int = 0,
    shard: tuple[int, int] = (0, 1),
    device: str = "cpu",
    with_index: bool = False,
) -> Iterator[tuple[Tensor, ...]]:
    """Yield ``(inputs, labels)`` batches from batch index ``start`` on, augmented with ``augment`` if given.

    The permutation is drawn from ``shuffle_seed`` (no shuffling when None) and batch ``i`` is
    augmented from its own seed, so starting at ``start`` gives exactly the batches an
    uninterrupted pass would have given there. With ``shard=(rank, world)`` every global batch
    of ``batch_size`` samples is augmented as a whole and split into ``world`` parts (rank
    ``r`` takes rows ``r, r + world, ...``): the processes of a data-parallel run together
    see exactly the batches of a single-process run. A final global batch with fewer than
    ``world`` samples is dropped, so that no process gets an empty batch. With ``with_index``
    each batch also carries the samples' positions in ``split`` (for per-sample caches).
    """
    rank, world = shard
    if not 0 <= rank < world:
        raise JfbError(f"shard rank must be in [0, {world}), got {rank}")
    if augment and shuffle_seed is None:
        raise JfbError("augmentation needs a shuffle seed")
    n = len(split)
    order = (
        torch.arange(n)
        if shuffle_seed is None
        else torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
    )
    for batch_index in range(start, math.ceil(n / batch_size)):
        index = order[batch_index * batch_size : (batch_index + 1) * batch_size]
        if len(index) < world:
            return
        images = split.images[index]
        if augment:
            images = augment_batch(
                images, torch.Generator().manual_seed(_batch_seed(shuffle_seed, batch_index)), augment
            )
        mine = index[rank::world]
        batch = (normalize(images[rank::world].to(device)), split.labels[mine].to(device))
        yield (*batch, mine) if with_index else batch


def _batch_seed(shuffle_seed: int, batch_index: int) -> int:
    return (shuffle_seed * 1_000_003 + batch_index) % (2**63)


def steps_per_pass(n: int, batch_size: int, world: int = 1) -> int:
    """Number of batches :func:`batches` yields for ``n`` samples."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world else 0)
