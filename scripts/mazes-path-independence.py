#!/usr/bin/env python3
"""Anil et al.'s question on a mazes model (default: the shipped one): does its per-maze alignment go with being
right? For each maze size: the test mazes of ``jfb eval mazes`` (same seeds), then
``jfb.looped.path_independence`` at the evaluation's largest budget and tolerance (the paper's start, another
maze's fixed point, and a random one), and per maze whether the path read from the reference solve is right.

usage: scripts/mazes-path-independence.py OUT_CSV [MAZES [MODEL]]   (MODEL: a checkpoint or saved folder)
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from pathlib import Path

import torch

import jfb
import jfb.pretrained
from jfb.reports import csv_text
from jfb.workloads.mazes import _test_mazes


def main() -> None:
    out, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100
    model, config = jfb.pretrained.from_pretrained(sys.argv[3] if len(sys.argv) > 3 else "mazes")
    config = dataclasses.replace(config, test_mazes=count)
    layer, rows, depth = model.engine.layer, [], max(config.test_depths)
    for size in config.test_sizes:
        images, paths = _test_mazes(config, size)
        torch.manual_seed(size)  # the random start
        with torch.no_grad(), layer.solving(max_iter=depth, tol=config.eval_tol, stop_mode="rel"):
            e = model.inject(images)
            result = jfb.looped.path_independence(layer, e)
            reference = layer.solve(e).fixed_point
            right = (model.head(reference).argmax(1) == paths).flatten(1).all(1)
        for i in range(len(right)):
            rows.append(dict(cells=size, max_iter=depth, maze=i, right=int(right[i]),
                             score=f"{float(result.score[i]):.6f}",
                             converged=int(result.converged[:, i].all())))  # fmt: skip
        for flag, name in ((True, "right"), (False, "wrong")):
            mine = [float(score) for score, r in zip(result.score, right, strict=True) if bool(r) == flag]
            if mine:
                print(size, name, len(mine), f"mean score {statistics.mean(mine):.4f}", flush=True)
    Path(out).write_text(csv_text(rows))


if __name__ == "__main__":
    main()
