"""``jfb bench generate``: bytes per second of cached decoding against re-solving the window at every byte, and
forward iterations per byte with and without the warm start.

Two models: the shipped language model (``lm``: context 64, each byte's solve to its validation tolerance), and
the same architecture with a context of ``long_context`` positions, untrained, every solve a fixed
``fixed_iterations`` iterations (``tol`` below reach), so both decoders do the same iterations and the time
measures what a solve of one position against a cache saves over a solve of the whole window. Greedy
decoding, the same prompts; for each length the ways run one after the other, ``repeats`` rounds
(interleaved), medians. The cached decoder and the re-solving one give the same bytes while the sequence fits
the context (tested); past it they see different windows (:mod:`jfb.decoding`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..decoding import generate
from ..files import prepare_run_dir
from ..pretrained import from_pretrained
from ..reports import Report, markdown_table, write_report
from ..settings import setting
from ..workloads.engines import jfb_engine
from ..workloads.language import DeqLanguageModel

PROMPTS = (b"    def __init__(self, name, value=None):\n        self.", b"import os\nimport sys\n\n")
WAYS = {"cache, warm start": {}, "cache, zero start": {"warm_start": False}, "re-solve the window": {"cache": False}}


@dataclass(frozen=True)
class GenerateBenchSettings:
    out: str = setting("runs/bench-generate", "output folder")
    lengths: tuple[int, ...] = setting((64, 256, 1024), "bytes generated per prompt, comma-separated")
    repeats: int = setting(3, "rounds of each way (interleaved; medians)")
    long_context: int = setting(1024, "context of the untrained long-context model")
    fixed_iterations: int = setting(10, "iterations of every solve of the long-context model")


def generate_table(settings: GenerateBenchSettings, log=print) -> Report:
    out = prepare_run_dir(Path(settings.out))
    shipped, config = from_pretrained("lm")
    torch.manual_seed(0)
    long = DeqLanguageModel(config.width, config.heads, settings.long_context, jfb_engine("jfb")).eval()
    models = {
        "lm (shipped, context 64)": (shipped, dict(tol=config.eval_tol, max_iter=config.eval_depth)),
        f"untrained, context {settings.long_context}": (long, dict(tol=1e-30, max_iter=settings.fixed_iterations)),
    }
    rows = []
    for name, (model, solve) in models.items():
        for length in settings.lengths:
            rows += _rows(name, model, length, solve, settings.repeats, log)
    return write_report(out, "generate", rows, _table(rows))


def _rows(name: str, model: Any, length: int, solve: dict, repeats: int, log) -> list[dict[str, Any]]:
    runs: dict[str, list] = {way: [] for way in WAYS}
    for _ in range(repeats):
        for way, options in WAYS.items():
            runs[way].append(generate(model, PROMPTS, max_new_tokens=length, **solve, **options))
    rows = []
    for way, made in runs.items():
        per_second = statistics.median(g.tokens.numel() / g.seconds for g in made)
        iterations = made[0].iterations[:, 1:].float()
        rows.append(
            {
                "model": name,
                "bytes": length,
                "way": way,
                "bytes_per_s": round(per_second, 1),
                "iterations_per_byte": round(iterations.mean().item(), 2),
                "not_converged": int((~made[0].converged).sum()),
                "window_slides": made[0].slides,
            }
        )
        log(f"{name}, {length} bytes, {way}: {per_second:.1f} bytes/s, {rows[-1]['iterations_per_byte']} iterations")
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    baseline = {(r["model"], r["bytes"]): r["bytes_per_s"] for r in rows if r["way"] == "re-solve the window"}
    cells = [
        (
            r["model"],
            r["bytes"],
            r["way"],
            r["bytes_per_s"],
            f"{r['bytes_per_s'] / baseline[r['model'], r['bytes']]:.2f}x",
            r["iterations_per_byte"],
            r["window_slides"],
        )
        for r in rows
    ]
    headers = ("model", "bytes", "way", "bytes/s", "vs re-solving", "iterations/byte", "window slides")
    return markdown_table(headers, cells)
