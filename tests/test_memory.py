"""Peak memory of a training step vs forward depth (fresh subprocess per measurement)."""
from __future__ import annotations

import pytest

from jfb.benchmarks.memory import peak_step_memory

DIM, BATCH = 2048, 256  # 2 MiB per activation: tensors dominate every other allocation


@pytest.mark.parametrize("backward", ["jfb", "ift"])
def test_constant_memory_backward_modes_do_not_grow_with_depth(backward):
    shallow = peak_step_memory(backward, 10, DIM, BATCH)
    deep = peak_step_memory(backward, 200, DIM, BATCH)
    assert shallow > 2.0  # the measurement sees the step's tensors at all
    assert deep / shallow <= 1.05, (shallow, deep)


def test_unroll_memory_grows_with_depth():
    """The same measurement must be able to fail: unrolled backprop stores every iteration."""
    shallow = peak_step_memory("unroll", 10, DIM, BATCH)
    deep = peak_step_memory("unroll", 200, DIM, BATCH)
    # 190 extra iterations keep at least one 2 MiB activation each
    assert deep - shallow > 190 * 2 * 0.9, (shallow, deep)
