"""The decoding loop: the prompts solved (one batched solve per length), then one solve per new token against
the cache, or the row's window solved afresh (a full cache, or no cache); per-token statistics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..equilibrium import fixed_point
from ..errors import JfbError
from .model import CAUSAL_DEQ_METHODS, CausalDeq, Operator, check_causal
from .sampling import DecodeOptions, next_tokens


@dataclass
class Generation:
    """What :func:`generate` made: the new tokens ``(rows, N)``, and per token the iterations of its solve, the
    relative residual it stopped at and whether it reached ``tol`` (for the first token, and after a window
    slide, those of the solve of the whole window); each prompt's length (``cropped_prompts``: those longer than the
    context); ``slides``: window slides; ``seconds``: wall time; ``cache``: the cache at the end (None without)."""

    tokens: Tensor
    iterations: Tensor
    residuals: Tensor
    converged: Tensor
    prompt_lengths: list[int]
    cropped_prompts: int = 0
    slides: int = 0
    seconds: float = 0.0
    cache: Any = None

    def bytes_of(self, row: int) -> bytes:
        return bytes(self.tokens[row].tolist())

    def summary(self) -> dict[str, Any]:
        """Per-token statistics over every row and token, and tokens per second."""
        count = self.tokens.numel()
        return {
            "rows": self.tokens.shape[0],
            "new_tokens": self.tokens.shape[1],
            "tokens_per_second": round(count / self.seconds, 1) if self.seconds else None,
            "iterations_mean": round(self.iterations.float().mean().item(), 2),
            "iterations_max": int(self.iterations.max().item()),
            "residual_max": float(self.residuals.max().item()),
            "not_converged": int((~self.converged).sum().item()),
            "window_slides": self.slides,
            "cropped_prompts": self.cropped_prompts,
        }


@dataclass
class _Decoder:
    """One :func:`generate` call's state: the model, the options, each row's tokens so far, the cache, the last
    states (warm starts) and logits, and the per-token statistics."""

    model: CausalDeq
    options: DecodeOptions
    sequences: list[Tensor]
    cache: Any = None
    last_state: Tensor | None = None
    logits: Tensor | None = None
    stats: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)
    slides: int = 0

    def solve(self, operator: Operator, x: Any, u0: Any) -> Any:
        with torch.no_grad():
            return fixed_point(
                operator,
                x,
                u0=u0,
                solver="picard",
                tol=self.options.tol,
                max_iter=self.options.max_iter,
                stop_mode="rel",
                on_failure="ignore",
            )

    def solve_windows(self, rows: Tensor, windows: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Solve each row's window as a prompt (one batched solve per window length); store the cache when
        caching; set the rows' last states and logits. The per-row iterations, residuals, converged flags."""
        out = [torch.empty(len(rows), dtype=dtype) for dtype in (torch.long, torch.float64, torch.bool)]
        for length in sorted({len(w) for w in windows}):
            group = [i for i, w in enumerate(windows) if len(w) == length]
            tokens = torch.stack([windows[i] for i in group])
            operator, x = self.model.prompt_problem(tokens)
            solved = self.solve(operator, x, torch.zeros_like(_first(x)))
            self.allocate(solved.fixed_point, x)
            if self.options.cache:
                self.model.store(self.cache, rows[group], solved.fixed_point, x)
            self.last_state[rows[group]] = solved.fixed_point[:, -1:]
            self.logits[rows[group]] = self.model.read_out(solved.fixed_point[:, -1:])[:, -1].float()
            for target, value in zip(out, _stats(solved)):
                target[group] = value
        return out[0], out[1], out[2]

    def allocate(self, states: Tensor, x: Any) -> None:
        """The cache, the last states and the logits of every row, at the first solve (which gives their shapes)."""
        if self.last_state is not None:
            return
        batch = len(self.sequences)
        self.cache = self.model.new_cache(batch, states) if self.options.cache else None
        self.last_state = states.new_zeros(batch, 1, *states.shape[2:])
        vocabulary = self.model.read_out(states[:1, -1:]).shape[-1]
        self.logits = torch.empty(batch, vocabulary, device=states.device)

    def step_cached(self, rows: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Solve the new position of each row against its cache; append it."""
        operator, x = self.model.token_problem(self.cache, rows, tokens)
        u0 = self.last_state[rows] if self.options.warm_start else torch.zeros_like(_first(x))
        solved = self.solve(operator, x, u0)
        self.model.append(self.cache, rows, solved.fixed_point, x)
        self.last_state[rows] = solved.fixed_point
        self.logits[rows] = self.model.read_out(solved.fixed_point)[:, -1].float()
        return _stats(solved)

    def advance(self, tokens: Tensor) -> None:
        """Add one token to every row and solve for it: against the cache, or (a row whose cache is full, or
        without a cache) the row's window solved afresh."""
        context = self.model.context
        for row, token in enumerate(tokens):
            self.sequences[row] = torch.cat([self.sequences[row], token.view(1)])
        batch = len(self.sequences)
        full = (self.cache.lengths >= context).cpu() if self.options.cache else torch.ones(batch, dtype=torch.bool)
        stats = [torch.empty(batch, dtype=dtype) for dtype in (torch.long, torch.float64, torch.bool)]
        refill, step = full.nonzero().flatten(), (~full).nonzero().flatten()
        if len(refill):
            keep = context // 2 if self.options.cache else context
            self.slides += int(self.options.cache) * len(refill)
            refilled = self.solve_windows(refill, [self.sequences[i][-keep:] for i in refill.tolist()])
            for target, value in zip(stats, refilled):
                target[refill] = value
        if len(step):
            for target, value in zip(stats, self.step_cached(step, tokens[step])):
                target[step] = value
        self.stats.append(tuple(stats))


def _first(x: Any) -> Tensor:
    """The state-shaped tensor of a problem's input: ``x``, or its first tensor."""
    return x[0] if isinstance(x, (tuple, list)) else x


def _stats(solved: Any) -> tuple[Tensor, Tensor, Tensor]:
    s = solved.stats
    return s.iterations.cpu().long(), s.rel_residual.cpu().double(), s.converged.cpu().bool()


def generate(
    model: Any,
    prompts: Sequence[Tensor | bytes | str],
    options: DecodeOptions | None = None,
    **settings: Any,
) -> Generation:
    """Continue each prompt by ``max_new_tokens`` tokens (:class:`DecodeOptions` as ``options`` or keywords).

    ``prompts``: 1-D tensors of token ids, or bytes / str for a byte-level model; of any lengths (one batched
    solve per length, then all rows together). A prompt longer than the model's context keeps its last
    ``context`` tokens (counted in :attr:`Generation.cropped_prompts`). The model is put in eval mode.
    """
    if options is not None and settings:
        raise JfbError(f"pass either options= or decoding settings as keywords, not both (got {', '.join(settings)})")
    options = options or DecodeOptions(**settings)
    _check_model(model)
    if not prompts:
        raise JfbError("generate needs at least one prompt")
    sequences = [_as_tokens(p, _device(model)) for p in prompts]
    if any(len(s) == 0 for s in sequences):
        raise JfbError("every prompt needs at least one token (an empty prompt has no position to start from)")
    lengths = [len(s) for s in sequences]
    cropped = sum(length > model.context for length in lengths)
    sequences = [s[-model.context :] for s in sequences]
    model.eval()
    two = sequences[0].repeat(2)[:2]  # two positions (a prompt of one token repeated) to check causality on
    operator, x = model.prompt_problem(two[None])
    check_causal(operator, x, _first(x))
    start = time.perf_counter()
    decoder = _Decoder(model, options, sequences)
    decoder.stats.append(decoder.solve_windows(torch.arange(len(sequences)), sequences))  # the prompts
    generator = torch.Generator().manual_seed(options.seed)
    new = []
    for index in range(options.max_new_tokens):
        tokens = next_tokens(decoder.logits, options, generator)
        new.append(tokens)
        if index + 1 < options.max_new_tokens:
            decoder.advance(tokens)
    iterations, residuals, converged = (torch.stack([s[k] for s in decoder.stats], 1) for k in range(3))
    return Generation(
        torch.stack(new, 1).cpu(),
        iterations,
        residuals,
        converged,
        lengths,
        cropped,
        decoder.slides,
        time.perf_counter() - start,
        decoder.cache,
    )


def _check_model(model: Any) -> None:
    missing = [f for f in ("context", *CAUSAL_DEQ_METHODS) if not hasattr(model, f)]
    if missing:
        raise JfbError(
            f"{type(model).__name__} cannot generate: it lacks {', '.join(missing)} (a causal model with a cache "
            "offers the methods of jfb.decoding.CausalDeq)"
        )


def _device(model: Any) -> torch.device:
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


def _as_tokens(prompt: Tensor | bytes | str, device: torch.device) -> Tensor:
    if isinstance(prompt, str):
        prompt = prompt.encode()
    if isinstance(prompt, (bytes, bytearray)):
        return torch.tensor(list(prompt), dtype=torch.long, device=device)
    if not isinstance(prompt, Tensor) or prompt.dim() != 1:
        raise JfbError(f"a prompt is a 1-D tensor of token ids, bytes or str; got {type(prompt).__name__}")
    return prompt.to(device=device, dtype=torch.long)
