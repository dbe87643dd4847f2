#!/usr/bin/env python3
"""Multi-start on the shipped prefix-sums model at budgets too small for the length: does keeping, per string, the
start of lowest residual among K (zeros, then random and mixed starts) get more strings right than zeros alone?

usage: scripts/prefix-sums-multistart.py OUT_CSV [STRINGS]

The test strings of ``jfb eval prefix-sums`` (same seeds); per length a budget where the solve from zeros gets part
of the strings right; K = 1 (zeros), 2, 4, 8; starts after zeros alternate "random" and "mixed" (seeded).
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

BUDGETS = {128: 120, 256: 240, 512: 480}  # the budget per length (from docs/results/looped.md: 0.72, 0.51, 0.38)


def main() -> None:
    out, strings = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100
    model, config = jfb.pretrained.from_pretrained("prefix-sums")
    config = dataclasses.replace(config, test_strings=strings)
    layer, rows = model.engine.layer, []
    for bits, depth in BUDGETS.items():
        inputs, targets = _test_strings(config, bits)
        for k in (1, 2, 4, 8):
            starts = ["zeros", *(["random", "mixed"] * 4)[: k - 1]]
            torch.manual_seed(bits + k)
            with torch.no_grad(), layer.solving(max_iter=depth, tol=config.eval_tol, stop_mode="rel"):
                e = model.inject(2 * inputs - 1)
                result = jfb.looped.multi_start(layer, e, starts)
                right = (model.head(result.value).argmax(1) == targets).all(1)
            chosen_zeros = float((result.choice == 0).float().mean())
            rows.append(dict(bits=bits, max_iter=depth, starts=k, accuracy=f"{float(right.float().mean()):.3f}",
                             chose_zeros=f"{chosen_zeros:.3f}"))  # fmt: skip
            print(rows[-1], flush=True)
    Path(out).write_text(csv_text(rows))


if __name__ == "__main__":
    main()
