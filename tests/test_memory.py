"""Peak memory of a training step vs forward depth (fresh subprocess per measurement)."""

from __future__ import annotations

import json

import pytest

from jfb.benchmarks.memory import peak_step_memory

pytestmark = pytest.mark.slow

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


def test_bench_memory_command_writes_table_and_plot(tmp_path, capsys):
    from jfb.cli.main import main

    argv = [
        "bench",
        "memory",
        "--out",
        str(tmp_path),
        "--depths",
        "5,40",
        "--methods",
        "jfb,unroll",
        "--batch-size",
        "20",
        "--json",
    ]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    peak = {(r["backward"], r["max_iter"]): r["peak_mib"] for r in rows}
    # the paper model: flat for JFB (at batch 20 the peak is ~7 MiB and moves by +-0.4 MiB from run to run at
    # any depth: measured 6.71-7.48 MiB at depths 5, 40 and 100) ...
    assert peak[("jfb", 40)] / peak[("jfb", 5)] <= 1.15
    assert peak[("unroll", 40)] > 2 * peak[("unroll", 5)]  # ... linear for unrolled backprop
    assert "| jfb |" in (tmp_path / "memory.md").read_text() and (tmp_path / "memory.png").is_file()
