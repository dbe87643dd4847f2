"""CIFAR-10, binary version (``cifar-10-binary.tar.gz``: records of 1 label byte + 3072 pixel bytes)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch

from ..errors import JfbError
from .download import fetch

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
MEMBERS = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
RECORD = 1 + 3 * 32 * 32


def parse_cifar_records(raw: bytes, name: str = "CIFAR-10 batch") -> tuple[torch.Tensor, torch.Tensor]:
    if len(raw) % RECORD:
        raise JfbError(f"{name}: {len(raw)} bytes is not a whole number of {RECORD}-byte records")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = torch.from_numpy(records[:, 0].astype(np.int64))
    if int(labels.max()) > 9:
        raise JfbError(f"{name}: label {int(labels.max())} out of range 0-9")
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
    return images, labels


def parse_cifar_archive(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    with tarfile.open(path, "r:gz") as archive:
        members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
        parts = []
        for name in MEMBERS[split]:
            if name not in members:
                raise JfbError(f"{path}: {name} missing from the archive")
            parts.append(parse_cifar_records(archive.extractfile(members[name]).read(), f"{path}:{name}"))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def load_cifar10(split: str, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return parse_cifar_archive(fetch(URL, MD5, data_dir / "cifar10"), split)
