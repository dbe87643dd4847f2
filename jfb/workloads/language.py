"""A DEQ language model: one weight-tied pre-norm transformer block with input injection, byte level.

The DEQ-Transformer family (Bai et al. 2019): ``T(u; x) = LN(h + MLP(LN(h)))`` with
``h = u + x + Attn(LN(u + x))`` (causal), ``x`` the byte and position embeddings; the logits read the
equilibrium. The corpus needs no download: the Python standard library's own source files of the running
interpreter (every ``.py`` file directly in its folder, sorted, split by file: one in ten to validation);
each run records the file count and a SHA-256 of the text, so a result names the exact text it came from.
``--text PATH`` trains on your own corpus instead: WikiText's published zip (``wikitext-103-v1.zip``,
checksum verified, its own splits) or any file of text or bytes (tiny-shakespeare, ...), split 90/10.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.wikitext import is_wikitext_archive, read_wikitext
from ..decoding import Generation, KVCache, generate
from ..errors import JfbError
from ..settings import setting
from ..train.engine import Loss
from .base import Placement, Workload, to_device
from .engines import EngineFactory

VOCAB = 256  # bytes


@dataclass(frozen=True)
class Corpus:
    """Training and validation bytes, where they came from, and the SHA-256 of both together."""

    train: Tensor
    valid: Tensor
    source: str
    files: int
    sha256: str


def stdlib_corpus(max_bytes: int) -> Corpus:
    """The standard library's top-level ``.py`` files, one in ten (by sorted position) for validation;
    each split cut to ``max_bytes``."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(folder.glob("*.py"))
    if len(files) < 20:
        raise JfbError(f"found {len(files)} .py files in {folder}; give a corpus with --text PATH")
    train, valid = bytearray(), bytearray()
    for index, path in enumerate(files):
        (valid if index % 10 == 9 else train).extend(path.read_bytes())
    return _corpus(bytes(train[:max_bytes]), bytes(valid[:max_bytes]), f"stdlib:{folder}", len(files))


def text_corpus(path: Path, max_bytes: int) -> Corpus:
    """A WikiText zip (its own train and valid splits, checksum verified), or any file's bytes: the first
    90% for training and the rest for validation; each split cut to ``max_bytes``."""
    if is_wikitext_archive(path):
        train, valid = (read_wikitext(Path(path), split, max_bytes) for split in ("train", "valid"))
        return _corpus(train, valid, str(path), 1)
    data = Path(path).read_bytes()
    if len(data) < 10_000:
        raise JfbError(f"{path} has {len(data)} bytes; a corpus needs at least 10000")
    cut = len(data) * 9 // 10
    return _corpus(data[:cut][:max_bytes], data[cut:][:max_bytes], str(path), 1)


def _corpus(train: bytes, valid: bytes, source: str, files: int) -> Corpus:
    digest = hashlib.sha256(train + valid).hexdigest()
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).long()  # noqa: E731
    return Corpus(as_tensor(train), as_tensor(valid), source, files, digest)


def byte_batch(data: Tensor, batch: int, context: int, seed: int) -> tuple[Tensor, Tensor]:
    """``batch`` random windows of ``context + 1`` bytes: inputs and next-byte targets."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
    windows = torch.stack([data[s : s + context + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


class TransformerBlock(nn.Module):
    """``T(u; x)``: causal self-attention and an MLP, pre-norm, on ``u + x``, with a final LayerNorm."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_attention, self.norm_mlp, self.norm_out = (nn.LayerNorm(width) for _ in range(3))
        self.qkv = nn.Linear(width, 3 * width)
        self.project = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def queries_keys_values(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(batch, heads, length, head_dim)`` each, of the normalised ``h = u + x``."""
        batch, length, width = h.shape
        qkv = self.qkv(self.norm_attention(h)).view(batch, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return q, k, v

    def attention_and_mlp(self, h: Tensor, attended: Tensor) -> Tensor:
        batch, length, width = h.shape
        h = h + self.project(attended.transpose(1, 2).reshape(batch, length, width))
        return self.norm_out(h + self.mlp(self.norm_mlp(h)))

    def forward(self, u: Tensor, x: Tensor) -> Tensor:
        h = u + x
        q, k, v = self.queries_keys_values(h)
        return self.attention_and_mlp(h, nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))

    def token_forward(self, u: Tensor, inputs: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        """``T`` at one new position per row (``u``, ``x``: ``(rows, 1, width)``), attending to the cached keys
        and values of the earlier positions' equilibria (``held`` masks the positions a row has) and its own."""
        x, keys, values, held = inputs
        h = u + x
        q, k, v = self.queries_keys_values(h)
        mask = torch.cat([held, held.new_ones(held.shape[0], 1)], 1)[:, None, None, :]
        attended = nn.functional.scaled_dot_product_attention(
            q, torch.cat([keys, k], 2), torch.cat([values, v], 2), attn_mask=mask
        )
        return self.attention_and_mlp(h, attended)


class DeqLanguageModel(nn.Module):
    """Byte and position embeddings, the equilibrium of :class:`TransformerBlock`, a linear read-out."""

    def __init__(self, width: int, heads: int, context: int, engine: EngineFactory) -> None:
        super().__init__()
        if width % heads:
            raise JfbError(f"width {width} is not a multiple of heads {heads}")
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(torch.randn(context, width) * 0.02)
        self.block = TransformerBlock(width, heads)
        self.head = nn.Linear(width, VOCAB)
        self.engine = engine(self.block)

    @property
    def context(self) -> int:
        """The most positions the model attends to (its position embeddings)."""
        return self.position.shape[0]

    def inject(self, tokens: Tensor, positions: Tensor) -> Tensor:
        return self.embed(tokens) + self.position[positions]

    def forward(self, tokens: Tensor, depth: int) -> tuple[Tensor, float]:
        x = self.inject(tokens, torch.arange(tokens.shape[1], device=tokens.device))
        solved = self.engine(x, torch.zeros_like(x), depth)
        return self.head(solved.value), solved.iterations

    # decoding (jfb.decoding.CausalDeq): the cache holds the keys and values of each position's equilibrium
    def prompt_problem(self, tokens: Tensor) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor]:
        return self.block, self.inject(tokens, torch.arange(tokens.shape[1], device=tokens.device))

    def new_cache(self, batch: int, like: Tensor) -> KVCache:
        width = self.position.shape[1]
        return KVCache.empty(batch, self.block.heads, self.context, width // self.block.heads, like)

    def store(self, cache: KVCache, rows: Tensor, u: Tensor, x: Tensor) -> None:
        _, keys, values = self.block.queries_keys_values(u + x)
        cache.put(rows, keys, values)

    def token_problem(self, cache: KVCache, rows: Tensor, tokens: Tensor) -> tuple[Callable, tuple[Tensor, ...]]:
        x = self.inject(tokens[:, None], cache.lengths[rows, None])
        return self.block.token_forward, (x, *cache.view(rows))

    def append(self, cache: KVCache, rows: Tensor, u: Tensor, x: tuple[Tensor, ...]) -> None:
        _, keys, values = self.block.queries_keys_values(u + x[0])
        cache.append(rows, keys, values)

    def read_out(self, u: Tensor) -> Tensor:
        return self.head(u)

    def generate(self, prompts: Sequence[Tensor | bytes | str], **options: Any) -> Generation:
        """:func:`jfb.decoding.generate` on this model (``options``: the fields of
        :class:`~jfb.decoding.DecodeOptions`)."""
        return generate(self, prompts, **options)


@dataclass(frozen=True)
class LanguageConfig(Placement):
    """``jfb train lm``: the corpus, the model, the training."""

    engine: str = setting("jfb", "jfb, ift (exact implicit gradient) or unroll")
    text: str | None = setting(
        None, "wikitext-103-v1.zip or any text file (default: the Python standard library's sources)"
    )
    max_bytes: int = setting(2_000_000, "most bytes of each split")
    width: int = setting(64, "model width")
    heads: int = setting(4, "attention heads")
    context: int = setting(64, "bytes per window")
    depth: int = setting(8, "forward iterations in training")
    eval_depth: int = setting(30, "most iterations at validation")
    steps: int = setting(600, "training steps")
    batch_size: int = setting(32, "windows per step")
    lr: float = setting(3e-3, "peak learning rate (of --schedule)")
    seed: int = setting(0, "seed of the weights and the windows")
    valid_windows: int = setting(256, "validation windows")
    eval_tol: float = setting(1e-3, "relative residual at which a validation solve stops")

    def corpus(self) -> Corpus:
        return _load_corpus(self.text, self.max_bytes)


@functools.lru_cache(maxsize=2)
def _load_corpus(text: str | None, max_bytes: int) -> Corpus:
    """One read (and, for WikiText, one MD5 of the zip) per corpus and process, however many models train on
    it (``jfb bench zoo`` trains one per engine) and validate."""
    return text_corpus(Path(text), max_bytes) if text else stdlib_corpus(max_bytes)


def _build(config: LanguageConfig, engine: EngineFactory) -> DeqLanguageModel:
    return DeqLanguageModel(config.width, config.heads, config.context, engine)


def _batches(config: LanguageConfig) -> Callable[[int], tuple[Tensor, Tensor]]:
    data = config.corpus().train
    return lambda step: byte_batch(data, config.batch_size, config.context, config.seed * 1_000_003 + step)


def _cross_entropy(model: nn.Module, batch: tuple[Tensor, Tensor], depth: int) -> tuple[Tensor, float]:
    tokens, targets = batch
    logits, iterations = model(tokens, depth)
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)), iterations


def _loss(config: LanguageConfig) -> Loss:
    return lambda model, batch: _cross_entropy(model, batch, config.depth)


@torch.no_grad()
def validation(model: nn.Module, config: LanguageConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Bits per byte on ``valid_windows`` fixed validation windows, the mean forward iterations, the corpus."""
    model.eval()
    corpus = config.corpus()
    tokens, targets = to_device(byte_batch(corpus.valid, config.valid_windows, config.context, 12345), config.device)
    loss, iterations = _cross_entropy(model, (tokens, targets), config.eval_depth)
    metrics = {
        "valid_bits_per_byte": round(loss.item() / math.log(2), 4),
        "valid_iterations": round(iterations, 1),
        "corpus": corpus.source,
        "corpus_files": corpus.files,
        "corpus_sha256": corpus.sha256,
    }
    return metrics, []


WORKLOAD = Workload(
    name="lm",
    help="A byte-level DEQ transformer language model on the Python standard library's sources (or --text).",
    config=LanguageConfig,
    build=_build,
    batches=_batches,
    loss=_loss,
    evaluate=validation,
    metric="valid_bits_per_byte",
    smoke=dict(steps=60, width=32, heads=2, context=32, max_bytes=200_000, valid_windows=64),
    higher_is_better=False,
    class_dim=-1,
)
