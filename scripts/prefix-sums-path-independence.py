#!/usr/bin/env python3
"""Anil et al.'s question on the shipped prefix-sums model: is it path independent, and does the per-string
alignment go with being right? For each string length: the test strings of ``jfb eval prefix-sums`` (same seeds),
``jfb.looped.path_independence`` at a budget of ``ITERATIONS_PER_BIT`` x the length (the paper's start, another
string's fixed point, and a random one), and per string whether the answer read from the reference solve is right.

usage: scripts/prefix-sums-path-independence.py OUT_CSV [STRINGS]
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

import jfb
import jfb.pretrained
from jfb.reports import csv_text
from jfb.workloads.prefix_sums import _test_strings

ITERATIONS_PER_BIT = 4


def main() -> None:
    out, strings = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100
    model, config = jfb.pretrained.from_pretrained("prefix-sums")
    config = dataclasses.replace(config, test_strings=strings)
    layer, rows = model.engine.layer, []
    for bits in (32, 64, 128, 256, 512):
        inputs, targets = _test_strings(config, bits)
        depth = ITERATIONS_PER_BIT * bits
        torch.manual_seed(bits)  # the random start
        with torch.no_grad(), layer.solving(max_iter=depth, tol=config.eval_tol, stop_mode="rel"):
            e = model.inject(2 * inputs - 1)
            result = jfb.looped.path_independence(layer, e)
            reference = layer.solve(e).fixed_point
            right = (model.head(reference).argmax(1) == targets).all(1)
        for i in range(len(right)):
            rows.append(dict(bits=bits, max_iter=depth, string=i, right=int(right[i]),
                             score=f"{float(result.score[i]):.6f}",
                             converged=int(result.converged[:, i].all())))  # fmt: skip
        print(bits, f"right {float(right.float().mean()):.3f}", f"score mean {float(result.score.mean()):.4f}",
              f"min {float(result.score.min()):.4f}", flush=True)  # fmt: skip
    Path(out).write_text(csv_text(rows))


if __name__ == "__main__":
    main()
