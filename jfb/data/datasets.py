"""The datasets: where each comes from, its statistics and augmentation, and the train / validation / test split.

Images stay in memory as uint8 tensors; the validation set is a fixed random subset of the
training set (drawn from ``seed``), the test set is the dataset's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import JfbError
from .cifar10 import load_cifar10
from .download import default_data_dir
from .mnist import load_mnist
from .svhn import load_svhn


@dataclass(frozen=True)
class Augmentation:
    """Random translation by up to ``padding`` pixels (zero-pad, random crop), mirroring when ``flip``, and a
    rotation about the centre by a uniform angle in ``[-rotation, rotation]`` degrees when ``rotation``."""

    padding: int
    flip: bool
    rotation: float = 0.0


@dataclass(frozen=True)
class DatasetInfo:
    loader: Callable[[str, Path], tuple[Tensor, Tensor]]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    validation_size: int
    #: what ``augment`` does for this dataset: digits are never mirrored
    augmentation: Augmentation


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        lambda split, _dir: load_mnist(split), (0.1307,), (0.3081,), 5000, Augmentation(2, flip=False)
    ),
    "svhn": DatasetInfo(
        load_svhn, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 5000, Augmentation(4, flip=False)
    ),
    # the paper's CIFAR-10 augmentation
    "cifar10": DatasetInfo(
        load_cifar10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 5000, Augmentation(4, flip=True)
    ),
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

    def subset(self, limit: int | None) -> Split:
        return self if limit is None else Split(self.images[:limit], self.labels[:limit])

    def shard(self, rank: int, world: int) -> Split:
        """Every ``world``-th sample from ``rank`` on (for evaluation split across processes)."""
        return self if world == 1 else Split(self.images[rank::world], self.labels[rank::world])


def load_splits(name: str, data_dir: Path | None = None, seed: int = 0) -> tuple[Split, Split, Split]:
    """Train / validation / test. The validation set is a fixed random subset of the training set."""
    info = dataset_info(name)
    directory = Path(data_dir) if data_dir else default_data_dir()
    images, labels = info.loader("train", directory)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    val, train = order[: info.validation_size], order[info.validation_size :]
    test = Split(*info.loader("test", directory))
    return Split(images[train], labels[train]), Split(images[val], labels[val]), test
