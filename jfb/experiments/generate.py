"""``jfb generate MODEL``: continue prompts with a trained DEQ language model, one fixed-point solve per byte.

``MODEL`` is a shipped model by name (``lm``) or a checkpoint of ``jfb train lm``. Each byte's solve reads a
key/value cache of the earlier positions' equilibria and starts from the previous position's state
(:mod:`jfb.decoding`); its tolerance and iteration cap default to the model's validation settings. Prints each
prompt with its continuation, then the per-byte statistics (iterations, residual, bytes per second).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..decoding import Generation, generate
from ..errors import JfbError
from ..pretrained import checkpoint_path
from ..settings import setting
from ..train.checkpoint import load_checkpoint
from ..train.setup import Log
from ..workloads import WORKLOADS
from ..workloads.saved import is_workload_checkpoint, restore_workload


@dataclass(frozen=True)
class GenerateSettings:
    model: str = setting(help="a shipped language model by name (lm) or a checkpoint of jfb train lm", positional=True)
    prompt: str = setting("def ", "the text to continue")
    prompts_file: str | None = setting(None, "continue every line of this file instead (one batch)")
    max_bytes: int = setting(256, "bytes to generate per prompt")
    sample: bool = setting(False, "sample (with --temperature, --top-k, --top-p); without it: greedy")
    temperature: float = setting(1.0, "divides the logits before sampling")
    top_k: int = setting(0, "sample among the k most likely bytes (0: all)")
    top_p: float = setting(1.0, "sample among the most likely bytes whose probabilities sum to top_p")
    seed: int = setting(0, "seed of the sampling")
    tol: float | None = setting(None, "relative residual at which each byte's solve stops (default: the model's)")
    max_iter: int | None = setting(None, "most iterations per byte (default: the model's validation depth)")
    warm_start: bool = setting(True, "start each byte's solve from the previous position's equilibrium")
    cache: bool = setting(True, "keep the equilibria's keys and values (without: re-solve the window per byte)")


def run_generate(settings: GenerateSettings, progress: bool = True, log: Log = print) -> dict[str, Any]:
    """Load the model, continue the prompts, print them: the texts and the per-byte statistics."""
    path = checkpoint_path(settings.model)
    checkpoint = load_checkpoint(path)
    kind = f"a {checkpoint['workload']!r} model" if is_workload_checkpoint(checkpoint) else "an image classifier"
    if checkpoint.get("workload") != "lm":
        raise JfbError(f"{settings.model} holds {kind}; jfb generate continues text with a language model (lm)")
    _, model, config = restore_workload(path, checkpoint, WORKLOADS)
    prompts = _prompts(settings)
    generation = generate(
        model,
        [p.encode() for p in prompts],
        max_new_tokens=settings.max_bytes,
        do_sample=settings.sample,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        seed=settings.seed,
        tol=settings.tol if settings.tol is not None else config.eval_tol,
        max_iter=settings.max_iter if settings.max_iter is not None else config.eval_depth,
        warm_start=settings.warm_start,
        cache=settings.cache,
    )
    texts = [generation.bytes_of(row).decode(errors="replace") for row in range(len(prompts))]
    for prompt, text in zip(prompts, texts):
        log(f"--- {prompt!r}\n{prompt}{text}")
    summary = generation.summary()
    log("--- " + ", ".join(f"{key} {value}" for key, value in summary.items()))
    if generation.cropped_prompts:
        log(f"note: {generation.cropped_prompts} prompt(s) over the context ({model.context} bytes): kept their end")
    return {"model": settings.model, "prompts": prompts, "texts": texts, **summary, **_per_token(generation)}


def _prompts(settings: GenerateSettings) -> list[str]:
    if settings.prompts_file is None:
        return [settings.prompt]
    lines = [line for line in Path(settings.prompts_file).read_text().splitlines() if line]
    if not lines:
        raise JfbError(f"{settings.prompts_file} holds no prompt (one per line)")
    return lines


def _per_token(generation: Generation) -> dict[str, Any]:
    return {
        "iterations": generation.iterations.tolist(),
        "residuals": [[float(f"{r:.3g}") for r in row] for row in generation.residuals.tolist()],
    }
