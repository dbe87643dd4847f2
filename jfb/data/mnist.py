"""MNIST from the official IDX .gz files shipped inside the package (MD5-checked at load)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import JfbError
from .checksum import verify_md5

PACKAGED_DIR = Path(__file__).parent / "mnist_files"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MD5 = {
    "train-images-idx3-ubyte.gz": "56f11203c65dcbeead45b51e76a4d637",
    "train-labels-idx1-ubyte.gz": "e7b6794769634574359eea14a747abe8",
    "t10k-images-idx3-ubyte.gz": "a3ecf3149c20433655c67fbfd8a8d3a4",
    "t10k-labels-idx1-ubyte.gz": "4134d8bfaa6f217c1c831e48c83339aa",
}
_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not): magic ``0 0 dtype ndim``, big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise JfbError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise JfbError(f"{path}: IDX header promises {dims} values, file holds {len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def load_mnist(split: str, directory: Path = PACKAGED_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 28, 28)`` uint8 and labels ``(N,)`` int64 of the ``train`` or ``test`` split."""
    images_name, labels_name = FILES[split]
    for name in (images_name, labels_name):
        if directory == PACKAGED_DIR:
            verify_md5(directory / name, MD5[name])
    images = torch.from_numpy(read_idx(directory / images_name).copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(directory / labels_name).astype(np.int64))
    if images.shape[0] != labels.shape[0]:
        raise JfbError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels
