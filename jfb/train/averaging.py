"""An exponential moving average of the weights (``ema_decay``), evaluated in place of the raw weights.

Every floating-point entry of the state dict (parameters and BatchNorm running statistics) is
averaged after each optimiser step, ``avg <- decay * avg + (1 - decay) * w``; integer entries
(``num_batches_tracked``) are copied. Validation, test, model selection and ``best.pt`` use the
average; ``last.pt`` holds both, so a resumed run continues the average exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                self.average[key].lerp_(value, 1 - self.decay)
            else:
                self.average[key].copy_(value)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the average inside the context, its own weights again after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average)
        try:
            yield
        finally:
            model.load_state_dict(own)
