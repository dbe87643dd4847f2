"""Token-by-token decoding of a causal DEQ language model, with a key/value cache of the equilibria.

For a causal operator the equilibrium of position ``t`` depends only on the equilibria of the earlier positions:
the fixed point of a prefix is the prefix of the fixed point. So :func:`generate` solves the prompt once (one
batched solve per prompt length), keeps what the later positions read of each equilibrium (an attention
block's keys and values: :class:`KVCache`), and for every new token solves only the new position's
equilibrium, warm-started from the previous position's, to a per-token tolerance and iteration cap (the
test-time compute per token). Greedy decoding this way gives the tokens that re-solving the whole sequence at
every step gives (``cache=False``, the reference), at a cost per token that does not grow with the length.

A model generates when it offers the six methods of :class:`CausalDeq` (the byte-level language model of
``jfb train lm`` does: :class:`jfb.workloads.language.DeqLanguageModel`); an operator that is not causal is
refused in one line before any token is made. The model attends to at most ``context`` positions: when a row's
cache is full, its last ``context // 2`` tokens are solved again as a new prompt (a window slide), so
beyond ``context`` tokens the cached and the re-solving decoders see different windows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .equilibrium import fixed_point
from .errors import JfbError
from .settings import setting

Operator = Callable[[Any, Any], Any]


@dataclass
class KVCache:
    """Keys and values of the equilibria of each row's positions so far: ``(batch, heads, context, head_dim)``
    each, and ``lengths`` (per row, the positions held; the rest is masked)."""

    keys: Tensor
    values: Tensor
    lengths: Tensor

    @classmethod
    def empty(cls, batch: int, heads: int, context: int, head_dim: int, like: Tensor) -> KVCache:
        keys = like.new_zeros(batch, heads, context, head_dim)
        return cls(keys, torch.zeros_like(keys), torch.zeros(batch, dtype=torch.long, device=like.device))

    @property
    def context(self) -> int:
        return self.keys.shape[2]

    def view(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The rows' keys, values and mask of held positions (``(rows, context)``, True where held)."""
        held = torch.arange(self.context, device=self.lengths.device) < self.lengths[rows, None]
        return self.keys[rows], self.values[rows], held

    def put(self, rows: Tensor, keys: Tensor, values: Tensor) -> None:
        """The rows' cache becomes ``keys``/``values`` of positions ``0 .. L-1`` (a solved prompt)."""
        length = keys.shape[2]
        self.keys[rows, :, :length], self.values[rows, :, :length] = keys, values
        self.lengths[rows] = length

    def append(self, rows: Tensor, keys: Tensor, values: Tensor) -> None:
        """Add one position (``keys``/``values`` of shape ``(rows, heads, 1, head_dim)``) to each of the rows."""
        at = self.lengths[rows]
        self.keys[rows, :, at], self.values[rows, :, at] = keys[:, :, 0], values[:, :, 0]
        self.lengths[rows] = at + 1


@runtime_checkable
class CausalDeq(Protocol):
    """What :func:`generate` needs of a model whose states are ``(batch, positions, ...)``.

    ``prompt_problem(tokens)``: ``(T, x)`` of the whole causal solve of ``tokens`` ``(rows, L)`` at positions
    ``0 .. L-1`` (the state starts at zeros like ``x``'s first tensor); ``new_cache(batch, like)``: an empty
    cache with a ``lengths`` tensor (a :class:`KVCache`); ``store(cache, rows, u, x)``: the rows' cache from
    their prompt's equilibrium; ``token_problem(cache, rows, tokens)``: ``(T, x)`` of one new position per row
    (``x`` batch-first, the cache's rows inside it: converged rows are sliced off as the solve goes);
    ``append(cache, rows, u, x)``: add the new position's equilibrium; ``read_out(u)``: logits from states.
    """

    context: int

    def prompt_problem(self, tokens: Tensor) -> tuple[Operator, Any]: ...

    def new_cache(self, batch: int, like: Tensor) -> Any: ...

    def store(self, cache: Any, rows: Tensor, u: Tensor, x: Any) -> None: ...

    def token_problem(self, cache: Any, rows: Tensor, tokens: Tensor) -> tuple[Operator, Any]: ...

    def append(self, cache: Any, rows: Tensor, u: Tensor, x: Any) -> None: ...

    def read_out(self, u: Tensor) -> Tensor: ...


CAUSAL_DEQ_METHODS = ("prompt_problem", "new_cache", "store", "token_problem", "append", "read_out")


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


@dataclass
class Generation:
    """What :func:`generate` made: the new tokens ``(rows, N)``, and per token the iterations of its solve, the
    relative residual it stopped at and whether it reached ``tol`` (for the first token, and after a window
    slide, those of the solve of the whole window); ``slides``: window slides; ``seconds``: wall time."""

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
    causal_checked: bool = False

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
            first = x[0] if isinstance(x, (tuple, list)) else x
            if not self.causal_checked and length > 1:
                check_causal(operator, x, first)
                self.causal_checked = True
            solved = self.solve(operator, x, torch.zeros_like(first))
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
        first = x[0] if isinstance(x, (tuple, list)) else x
        u0 = self.last_state[rows] if self.options.warm_start else torch.zeros_like(first)
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


def _stats(solved: Any) -> tuple[Tensor, Tensor, Tensor]:
    s = solved.stats
    return s.iterations.cpu().long(), s.rel_residual.cpu().double(), s.converged.cpu().bool()


def check_causal(operator: Operator, x: Any, like: Tensor) -> None:
    """JfbError unless ``T(u; x)`` at positions ``0 .. L-2`` is independent of ``u`` at position ``L-1``
    (checked with one vector-Jacobian product at a random state): a cache of earlier equilibria is exact only
    for a causal operator."""
    with torch.enable_grad():
        u = torch.randn_like(like).requires_grad_(True)
        out = operator(u, x)
        (grad,) = torch.autograd.grad(out[:, :-1].sum(), u)
    leak, scale = grad[:, -1].abs().max().item(), grad.abs().max().item()
    if leak > 1e-6 * max(scale, 1e-30):
        raise JfbError(
            f"generate needs a causal operator: T's output at earlier positions depends on the last position's "
            f"state (|dT/du| up to {leak:.2e}), so a cache of earlier equilibria would be wrong"
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
