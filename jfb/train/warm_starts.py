"""Per-sample warm starts across epochs (``--warm-start``)."""

from __future__ import annotations

import torch


class WarmStarts:
    """Each training sample's last fixed point, to start its next solve from.

    Samples not yet seen start from zero. The cache lives in memory (N x latent size, float32;
    345 MB for MNIST) and is not checkpointed: a resumed run starts it cold again.
    """

    def __init__(self, samples: int) -> None:
        self.samples = samples
        self.cache: torch.Tensor | None = None

    def initial(self, index: torch.Tensor, device: str, memory_format: torch.memory_format) -> torch.Tensor | None:
        if self.cache is None:
            return None
        return self.cache[index].to(device).contiguous(memory_format=memory_format)

    def store(self, index: torch.Tensor, fixed_point: torch.Tensor) -> None:
        if self.cache is None:
            self.cache = fixed_point.new_zeros((self.samples, *fixed_point.shape[1:]), device="cpu")
        self.cache[index] = fixed_point.to("cpu")
