"""How each token is picked: :class:`DecodeOptions` (the names of Hugging Face's ``generate``) and
:func:`next_tokens` (greedy, or sampled with temperature, top-k and top-p from a seeded generator)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import JfbError
from ..settings import setting


@dataclass(frozen=True)
class DecodeOptions:
    """How :func:`generate` picks and solves each token (the names of Hugging Face's ``generate`` where they
    exist)."""

    max_new_tokens: int = setting(64, "tokens to generate per prompt")
    do_sample: bool = setting(False, "sample (with temperature, top-k, top-p); without it: greedy")
    temperature: float = setting(1.0, "divides the logits before sampling")
    top_k: int = setting(0, "sample among the k most likely tokens (0: all)")
    top_p: float = setting(1.0, "sample among the most likely tokens whose probabilities sum to top_p")
    seed: int = setting(0, "seed of the sampling")
    tol: float = setting(1e-3, "relative residual at which each token's solve stops")
    max_iter: int = setting(30, "most iterations per token (test-time compute)")
    warm_start: bool = setting(True, "start each token's solve from the previous position's equilibrium")
    cache: bool = setting(True, "keep the equilibria's keys and values; without it, re-solve the window per token")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.max_iter < 1:
            raise JfbError(f"max_new_tokens and max_iter must be >= 1, got {self.max_new_tokens}, {self.max_iter}")
        if not self.tol > 0:
            raise JfbError(f"tol must be > 0, got {self.tol}")
        if not self.do_sample and (self.temperature != 1.0 or self.top_k or self.top_p != 1.0):
            raise JfbError("temperature, top_k and top_p shape sampling: pass do_sample=True (--sample) with them")
        if not self.temperature > 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise JfbError(
                f"temperature must be > 0, top_k >= 0 and top_p in (0, 1]; got {self.temperature}, "
                f"{self.top_k}, {self.top_p}"
            )


def next_tokens(logits: Tensor, options: DecodeOptions, generator: torch.Generator) -> Tensor:
    """The next token of each row: the argmax, or a sample from the logits divided by the temperature, kept to
    the ``top_k`` most likely and to the smallest set whose probabilities reach ``top_p``."""
    if not options.do_sample:
        return logits.argmax(-1)
    logits = logits / options.temperature
    if options.top_k and options.top_k < logits.shape[-1]:
        kth = logits.topk(options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probabilities = ordered.softmax(-1)
        before = probabilities.cumsum(-1) - probabilities  # the mass of the more likely tokens
        ordered = ordered.masked_fill(before >= options.top_p, float("-inf"))  # the most likely always stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    choice = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator)
    return choice.flatten().to(logits.device)
