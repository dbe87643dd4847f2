"""Files that would make a loader allocate far more memory than they hold are refused in one line.

Both loaders (our checkpoints: ``load_checkpoint``, the paper authors' files: ``load_tensors_only``) check the
zip archive before reading it: ``torch.save`` stores members uncompressed, so a compressed member (a
decompression bomb: 0.5 MB that ``torch.load`` expanded to 500 MB before this check) is refused, and so are
members that declare more bytes than the file has and tensors that reach past their storage.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from jfb.errors import JfbError
from jfb.safe_load import load_tensors_only
from jfb.train.checkpoint import load_checkpoint

LOADERS = [load_checkpoint, load_tensors_only]


def _saved(obj) -> dict[str, bytes]:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with zipfile.ZipFile(buffer) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write(path: Path, members: dict[str, bytes], bomb: tuple[str, int] | None = None) -> Path:
    """A zip of ``members``; ``bomb = (name, megabytes)`` adds a deflated member of that many zero bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if bomb is not None:
            info = zipfile.ZipInfo(bomb[0])
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                for _ in range(bomb[1]):
                    member.write(bytes(1 << 20))
    return path


def _bomb(path: Path, megabytes: int) -> Path:
    members = _saved({"format": "torch-jfb/1", "w": torch.zeros(4)})
    storage = next(name for name in members if name.endswith("data/0"))
    return _write(path, {k: v for k, v in members.items() if k != storage}, (storage, megabytes))


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_a_decompression_bomb_is_refused(tmp_path, loader) -> None:
    path = _bomb(tmp_path / "bomb.pt", 64)
    assert path.stat().st_size < 100_000
    with pytest.raises(JfbError, match=r"is compressed \(67108864 bytes from \d+\); torch.save never compresses"):
        loader(path)


@pytest.mark.slow
def test_a_decompression_bomb_costs_no_memory(tmp_path) -> None:
    """Peak RSS growth while both loaders refuse a 0.25 MB file that expands to 256 MB: under 16 MB."""
    path = _bomb(tmp_path / "bomb.pt", 256)
    script = (
        "import resource, sys\n"
        "from jfb.safe_load import load_tensors_only\nfrom jfb.train.checkpoint import load_checkpoint\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for load in (load_checkpoint, load_tensors_only):\n"
        "    try:\n        load(sys.argv[1])\n    except ValueError:\n        pass\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 16


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_a_storage_shorter_than_it_declares_is_refused(tmp_path, loader) -> None:
    members = _saved({"format": "torch-jfb/1", "w": torch.zeros(4)})
    storage = next(name for name in members if name.endswith("data/0"))
    members[storage] = members[storage][:8]
    with pytest.raises(JfbError, match=r"(holds 8 bytes, not the 4 x 4|record size)"):
        loader(_write(tmp_path / "short.pt", members))


class _Storage:
    """Pickled by reference: the persistent id of a storage of ``numel`` floats stored as member ``key``."""

    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _HugeView:
    """Pickles as a tensor of 10**9 elements over a storage of 4."""

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (_Storage("0", 4), 0, (10**9,), (1,), False, OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel) if isinstance(obj, _Storage) else None


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path, loader) -> None:
    data = io.BytesIO()
    _Pickler(data, protocol=2).dump({"format": "torch-jfb/1", "w": _HugeView()})
    members = {"archive/data.pkl": data.getvalue(), "archive/data/0": bytes(16), "archive/version": b"3\n"}
    with pytest.raises(JfbError, match=r"(reaches element 1000000000 of a storage of 4|storage that is not resizable)"):
        loader(_write(tmp_path / "huge.pt", members))
