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

from .loop import Generation, generate
from .model import CAUSAL_DEQ_METHODS, CausalDeq, KVCache, check_causal
from .sampling import DecodeOptions, next_tokens

__all__ = [
    "CAUSAL_DEQ_METHODS",
    "CausalDeq",
    "DecodeOptions",
    "Generation",
    "KVCache",
    "check_causal",
    "generate",
    "next_tokens",
]
