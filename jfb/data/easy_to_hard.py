"""The prefix-sums files of Schwarzschild et al.'s easy-to-hard datasets (the ``easy-to-hard-data`` package),
read from a folder the user downloaded (nothing is fetched here).

Layout: ``ROOT/prefix_sums_data/len_N/N_data.pth`` (10,000 strings of N bits, 0/1 floats) and
``N_targets.pth`` (their prefix parities). The project publishes no checksums, so each file pair is checked
by its content: the targets must be the running parity of the inputs. The files are read without running
pickled code (:func:`jfb.safe_load.load_tensors_only`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import JfbError
from ..safe_load import load_tensors_only


def prefix_sums_files(root: Path, bits: int) -> tuple[Path, Path]:
    folder = Path(root) / "prefix_sums_data" / f"len_{bits}"
    return folder / f"{bits}_data.pth", folder / f"{bits}_targets.pth"


def read_prefix_sums(root: Path, bits: int) -> tuple[Tensor, Tensor]:
    """Strings ``(N, 1, bits)`` as 0/1 floats and their prefix parities ``(N, bits)``, checked."""
    data_path, targets_path = prefix_sums_files(root, bits)
    for path in (data_path, targets_path):
        if not path.is_file():
            raise JfbError(f"{path}: no such file (the easy-to-hard prefix_sums_data folder has len_16 ... len_512)")
    strings, targets = load_tensors_only(data_path), load_tensors_only(targets_path)
    for name, tensor in (("data", strings), ("targets", targets)):
        if not isinstance(tensor, Tensor) or tensor.dim() != 2 or tensor.shape[1] != bits:
            raise JfbError(f"{data_path.parent}: {name} is not a (strings, {bits}) tensor")
    if strings.shape != targets.shape or not torch.isin(strings, torch.tensor([0.0, 1.0])).all():
        raise JfbError(f"{data_path.parent}: data must be 0/1 bits with one target row per string")
    if not torch.equal(strings.long().cumsum(1) % 2, targets.long()):
        raise JfbError(f"{targets_path}: the targets are not the prefix parities of the data (a damaged file?)")
    return strings[:, None].float(), targets.long()
