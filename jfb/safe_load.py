"""Reading tensors from ``torch.save`` zip archives without executing pickled code.

The paper authors' checkpoints pickle an optimiser and a scheduler object next to the weights,
so ``torch.load(weights_only=True)`` refuses them, and ``weights_only=False`` would run whatever
code the file names. :func:`load_tensors_only` unpickles with an allow-list: tensors, storages,
parameters and plain containers are rebuilt; any other class becomes an inert
:class:`OpaqueObject` that records its name and never runs code.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import JfbError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def check_archive(archive: zipfile.ZipFile, archive_bytes: int) -> None:
    """Refuse an archive that would make a reader allocate more than the file holds.

    ``torch.save`` stores every member uncompressed, so a compressed member (a decompression bomb: a few
    kilobytes that expand to gigabytes, which ``torch.load`` would allocate whole) or members declaring more
    bytes than the file has are not ours. After this check a reader allocates at most the file's size.
    Raises ``pickle.UnpicklingError`` (the readers turn it into one JfbError line).
    """
    declared = 0
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise pickle.UnpicklingError(
                f"member {info.filename!r} is compressed ({info.file_size} bytes from {info.compress_size}); "
                "torch.save never compresses, so the file is not a checkpoint"
            )
        declared += info.file_size
    if declared > archive_bytes:
        raise pickle.UnpicklingError(f"members declare {declared} bytes but the file has {archive_bytes}")


class OpaqueObject(dict):
    """Stand-in for a pickled object of a class that is not allowed; holds its state as data."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        self["__state__"] = state


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks: Any, *rest: Any) -> torch.Tensor:
    return data


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *rest: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` once the view is checked to lie inside its storage."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor without a storage ({type(storage).__name__})")
    shape_ok = all(isinstance(n, int) and n >= 0 for n in (offset, *size, *stride)) and len(size) == len(stride)
    if not shape_ok:
        raise pickle.UnpicklingError(f"a tensor with a malformed shape {size!r}, stride {stride!r}, offset {offset!r}")
    end = offset + sum((n - 1) * step for n, step in zip(size, stride)) + 1 if all(size) else 0
    available = storage._untyped_storage.nbytes() // torch.empty(0, dtype=storage.dtype).element_size()
    if end > available:
        raise pickle.UnpicklingError(
            f"a tensor of shape {tuple(size)} reaches element {end} of a storage of {available}"
        )
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, *rest)


def _opaque_class(module: str, name: str) -> type:
    return type(name, (OpaqueObject,), {"__module__": f"opaque.{module}"})


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        return _opaque_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        dtype = (
            storage_type.dtype
            if isinstance(storage_type, torch.storage.TypedStorage)
            else _STORAGE_DTYPES.get(storage_type)
        )
        if dtype is None:
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        name, itemsize = f"{self.prefix}data/{key}", torch.empty(0, dtype=dtype).element_size()
        if self.archive.getinfo(name).file_size != _numel * itemsize:
            raise pickle.UnpicklingError(
                f"storage {key} holds {self.archive.getinfo(name).file_size} bytes, "
                f"not the {_numel} x {itemsize} it declares"
            )
        raw = self.archive.read(name)
        untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def load_tensors_only(path: str | Path) -> Any:
    """Load a ``torch.save`` zip archive, rebuilding only tensors and plain containers.

    Raises ValueError naming the file when it is not a readable torch zip archive.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, path.stat().st_size)
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise JfbError(f"{path}: not a torch.save archive (expected one data.pkl, found {len(pickles)})")
            prefix = pickles[0][: -len("data.pkl")]
            return _TensorOnlyUnpickler(archive.read(pickles[0]), archive, prefix).load()
    except JfbError:
        raise
    except Exception as exc:  # a damaged or hostile file: zip, pickle, torch and type errors alike (fuzzed)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JfbError(f"{path}: cannot read checkpoint ({first_line})") from exc
