"""Mixed precision by name: ``fp32`` (none), ``bf16`` and ``fp16`` autocast, fp16's gradient scaler, and
``auto``: bf16 where the device runs it natively, fp32 elsewhere.

The layer keeps the fixed-point state in float32 under autocast (see :class:`jfb.ImplicitLayer`);
these helpers only choose the region the model runs in.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from .errors import JfbError, unknown_name

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO = "auto"
CHOICES = (*PRECISIONS, AUTO)


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with AMX tiles
    or AVX512-BF16 instructions.

    Elsewhere bf16 is emulated and slower than fp32 (measured: 10x on a CPU without AVX-512). Where it is
    native, measured on the MNIST model: an AMX Xeon evaluates 2.4x faster, an AVX512-BF16 EPYC 1.48x
    faster (training epochs 0.62-0.71x the time), at the same test accuracy.
    """
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # private in torch; a probe that is absent means "unknown": not native
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe is not None and bool(probe()) for probe in probes)


def resolve(precision: str, device: str) -> str:
    """The precision ``precision`` (already checked) stands for on ``device`` (``auto`` -> bf16 or fp32).

    Called at every training step and evaluation batch, so it does not validate again.
    """
    if precision == AUTO:
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def check_precision(precision: str, device: str = "cpu") -> None:
    """A known name, and one the device runs: bf16 needs a GPU that supports it (any CPU does)."""
    if precision not in CHOICES:
        raise unknown_name("precision", precision, CHOICES)
    on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if precision == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise JfbError("precision 'bf16' asked for, but this GPU does not support bfloat16; use 'fp16' or 'fp32'")


def autocast(device: str, precision: str) -> AbstractContextManager:
    """``torch.autocast`` to the precision's dtype on ``device``'s type; nothing for fp32."""
    dtype = PRECISIONS[resolve(precision, device)]
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(device: str, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (its gradients underflow without one); None otherwise."""
    if resolve(precision, device) != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)
