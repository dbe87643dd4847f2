"""Datasets held in memory as uint8 tensors, with a deterministic validation split.

``load_splits(name)`` returns train / validation / test :class:`Split` objects; batches are
normalised (and, for training with ``augment``, randomly shifted, and mirrored where the dataset
allows) on the fly, on whole batches of tensors. The test split is never augmented.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from .cifar10 import load_cifar10
from .download import default_data_dir
from .mnist import load_mnist
from .svhn import load_svhn
from ..errors import JfbError


@dataclass(frozen=True)
class Augmentation:
    """Random translation by up to ``padding`` pixels (zero-pad, random crop), and mirroring when ``flip``."""

    padding: int
    flip: bool


@dataclass(frozen=True)
class DatasetInfo:
    loader: Callable[[str, Path], tuple[Tensor, Tensor]]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    validation_size: int
    #: what ``augment`` does for this dataset: digits are never mirrored
    augmentation: Augmentation


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(lambda split, _dir: load_mnist(split), (0.1307,), (0.3081,), 5000, Augmentation(2, flip=False)),
    "svhn": DatasetInfo(load_svhn, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 5000, Augmentation(4, flip=False)),
    # the paper's CIFAR-10 augmentation
    "cifar10": DatasetInfo(load_cifar10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 5000, Augmentation(4, flip=True)),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise JfbError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


@dataclass
class Split:
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, limit: Optional[int]) -> "Split":
        return self if limit is None else Split(self.images[:limit], self.labels[:limit])

    def shard(self, rank: int, world: int) -> "Split":
        """Every ``world``-th sample from ``rank`` on (for evaluation split across processes)."""
        return self if world == 1 else Split(self.images[rank::world], self.labels[rank::world])


def load_splits(name: str, data_dir: Optional[Path] = None, seed: int = 0) -> tuple[Split, Split, Split]:
    """Train / validation / test. The validation set is a fixed random subset of the training set."""
    info = dataset_info(name)
    directory = Path(data_dir) if data_dir else default_data_dir()
    images, labels = info.loader("train", directory)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    val, train = order[: info.validation_size], order[info.validation_size :]
    test = Split(*info.loader("test", directory))
    return Split(images[train], labels[train]), Split(images[val], labels[val]), test


class Normalizer:
    """uint8 images -> float, shifted and scaled per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std).view(1, -1, 1, 1) * 255)

    def __call__(self, images: Tensor) -> Tensor:
        mean, inv_std = self.mean.to(images.device), self.inv_std.to(images.device)
        return (images.float() - mean) * inv_std


def augment_batch(images: Tensor, generator: torch.Generator, augmentation: Augmentation) -> Tensor:
    """A whole batch at once: zero-pad, random crop per image, horizontal flip with probability 1/2 when enabled."""
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
    if not augmentation.flip:
        return out
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def batches(
    split: Split,
    batch_size: int,
    normalize: Normalizer,
    *,
    shuffle_seed: Optional[int] = None,
    augment: Optional[Augmentation] = None,
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
    order = torch.arange(n) if shuffle_seed is None else torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
    for batch_index in range(start, math.ceil(n / batch_size)):
        index = order[batch_index * batch_size : (batch_index + 1) * batch_size]
        if len(index) < world:
            return
        images = split.images[index]
        if augment:
            images = augment_batch(images, torch.Generator().manual_seed(_batch_seed(shuffle_seed, batch_index)), augment)
        mine = index[rank::world]
        batch = (normalize(images[rank::world].to(device)), split.labels[mine].to(device))
        yield (*batch, mine) if with_index else batch


def _batch_seed(shuffle_seed: int, batch_index: int) -> int:
    return (shuffle_seed * 1_000_003 + batch_index) % (2**63)


def steps_per_pass(n: int, batch_size: int, world: int = 1) -> int:
    """Number of batches :func:`batches` yields for ``n`` samples."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world else 0)


__all__ = ["DATASETS", "Augmentation", "DatasetInfo", "Normalizer", "Split", "augment_batch", "batches", "dataset_info", "load_splits", "steps_per_pass"]
