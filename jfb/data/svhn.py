"""SVHN cropped digits (``train_32x32.mat`` / ``test_32x32.mat``, MATLAB v5 files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import JfbError
from .download import fetch

URL = "http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"
MD5 = {"train": "e26dedcc434d2e4c54c9b2d4a06d8373", "test": "eb5a983be6a315427106f1b164d9cef3"}


def parse_svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``X`` is ``(32, 32, 3, N)`` uint8, ``y`` is ``(N, 1)`` with label 10 for the digit 0."""
    try:
        from scipy.io import loadmat  # an optional extra, needed only for SVHN
    except ImportError:
        raise JfbError("reading SVHN's .mat files needs scipy: pip install 'torch-jfb[svhn]'") from None

    mat = loadmat(str(path))
    if "X" not in mat or "y" not in mat:
        raise JfbError(f"{path}: not an SVHN .mat file (variables X and y missing)")
    images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))).to(torch.uint8)
    labels = torch.from_numpy(mat["y"].reshape(-1).astype(np.int64)) % 10
    if images.shape[1:] != (3, 32, 32) or images.shape[0] != labels.shape[0]:
        raise JfbError(f"{path}: unexpected shapes {tuple(images.shape)} / {tuple(labels.shape)}")
    return images, labels


def load_svhn(split: str, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return parse_svhn_mat(fetch(URL.format(split=split), MD5[split], data_dir / "svhn"))
