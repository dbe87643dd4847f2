#!/usr/bin/env python3
"""A learned halting head on the deep-supervision mazes model: the compute it saves at equal accuracy.

The model (``jfb train mazes --segments 3 --depth 10``) is run in segments of 10 Picard iterations, its training
segment. A pooled :class:`jfb.looped.HaltingHead` (a hidden layer of 16 per pixel, then each hidden channel's mean
and maximum over the pixels) is fitted with
:func:`jfb.looped.halting_loss` on states of mazes of every test size (seeds disjoint from the test mazes'; the model
itself is not retrained): per segment, "the path read from this state is right". Then on the test mazes of
``jfb eval mazes`` (its seeds): every fixed number of segments (accuracy and compute), and
:func:`jfb.looped.halted_solve` at several thresholds (accuracy, mean segments, segments per maze). Compute is in
segments (10 iterations each); "at equal accuracy" compares a threshold with the fewest fixed segments that reach
its accuracy.

usage: scripts/mazes-halting.py MODEL OUT_DIR [SEGMENTS] [FIT_MAZES]
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

import jfb
import jfb.pretrained
from jfb.data.mazes import maze_batch
from jfb.reports import csv_text
from jfb.workloads.mazes import _test_mazes

SEGMENT = 10  # Picard iterations per segment: the model's training segment
THRESHOLDS = (0.5, 0.9, 0.99)
HIDDEN, FIT_STEPS, FIT_BATCH = 16, 600, 256
FIT_SEED = 7_000_000  # the head's mazes: far from the training and test seeds


def per_segment(model, images, paths, count):
    """Per segment: the state and whether the path read from it is right, ``(count, B, ...)`` and ``(count, B)``."""
    layer, states, right = model.engine.layer, [], []
    with torch.no_grad(), layer.solving(max_iter=SEGMENT, tol=None):
        for solved in jfb.looped.segments(layer, model.inject(images), count):
            states.append(solved.value)
            right.append((model.head(solved.value).argmax(1) == paths).flatten(1).all(1))
    return torch.stack(states), torch.stack(right)


def fit_head(model, sizes, count, mazes):
    """A pooled head with a hidden layer per pixel, fitted by Adam on every segment's state of ``mazes`` mazes of each
    size (a minibatch of one size per step, the sizes in turn)."""
    torch.manual_seed(0)
    head = jfb.looped.HaltingHead(model.width, pooled=True, hidden=HIDDEN)
    groups = []
    for n in sizes:
        states, right = per_segment(model, *maze_batch(mazes, n, FIT_SEED + n), count)
        groups.append((states.flatten(0, 1), right.flatten()))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for step in range(FIT_STEPS):
        states, right = groups[step % len(groups)]
        rows = torch.randint(len(right), (FIT_BATCH,), generator=generator)
        loss = jfb.looped.halting_loss(head(states[rows]), right[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for n, (states, right) in zip(sizes, groups, strict=True):
            agreement = float(((head(states) > 0) == right).float().mean())
            print(f"{n}x{n}: {len(right)} states, {float(right.float().mean()):.2f} right, agreement {agreement:.3f}")
    return head


def fixed_rows(model, tests, count):
    """Accuracy of every size together after each fixed number of segments."""
    right = torch.cat([per_segment(model, images, paths, count)[1] for images, paths in tests.values()], 1)
    return [dict(policy="fixed", segments=k + 1, mean_segments=k + 1, accuracy=f"{float(right[k].float().mean()):.4f}")
            for k in range(count)]  # fmt: skip


def halted_rows(model, head, tests, count):
    """Accuracy, mean segments and halted share of every size together under the head at each threshold."""
    rows, layer = [], model.engine.layer
    for threshold in THRESHOLDS:
        right, segments, per_size = [], [], []
        with torch.no_grad(), layer.solving(max_iter=SEGMENT, tol=None):
            for size, (images, paths) in tests.items():
                result = jfb.looped.halted_solve(layer, model.inject(images), head, count, threshold=threshold)
                right.append((model.head(result.value).argmax(1) == paths).flatten(1).all(1))
                segments.append(result.segments)
                per_size.append(
                    f"{size}:{float(right[-1].float().mean()):.2f}/{float(result.segments.float().mean()):.1f}"
                )
        right, segments = torch.cat(right), torch.cat(segments)
        mean_segments, accuracy = float(segments.float().mean()), float(right.float().mean())
        rows.append(dict(policy=f"halting {threshold}", segments=count, mean_segments=f"{mean_segments:.2f}",
                         accuracy=f"{accuracy:.4f}", per_size=" ".join(per_size)))  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    model_path, out = sys.argv[1], Path(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 48
    fit_mazes = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    model, config = jfb.pretrained.from_pretrained(model_path)
    config = dataclasses.replace(config, test_mazes=100)
    head = fit_head(model, config.test_sizes, count, fit_mazes)
    tests = {size: _test_mazes(config, size) for size in config.test_sizes}
    rows = fixed_rows(model, tests, count) + halted_rows(model, head, tests, count)
    out.mkdir(parents=True, exist_ok=True)
    (out / "halting.csv").write_text(csv_text(rows))


if __name__ == "__main__":
    main()
