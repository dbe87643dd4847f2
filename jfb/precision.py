"""Mixed precision by name: ``fp32`` (none), ``bf16`` and ``fp16`` autocast, and fp16's gradient scaler.

The layer keeps the fixed-point state in float32 under autocast (see :class:`jfb.ImplicitLayer`);
these helpers only choose the region the model runs in.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from .errors import JfbError, unknown_name

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: str = "cpu") -> None:
    """A known name, and one the device runs: bf16 needs a GPU that supports it (any CPU does)."""
    if precision not in PRECISIONS:
        raise unknown_name("precision", precision, PRECISIONS)
    on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if precision == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise JfbError("precision 'bf16' asked for, but this GPU does not support bfloat16; use 'fp16' or 'fp32'")


def autocast(device: str, precision: str) -> AbstractContextManager:
    """``torch.autocast`` to the precision's dtype on ``device``'s type; nothing for fp32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(device: str, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (its gradients underflow without one); None for fp32 and bf16."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)
