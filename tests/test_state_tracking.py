"""The state-tracking workload: its groups and words are right, its rotary block sees relative positions only,
the explicit stack baseline holds untied blocks, and a tiny training learns S3."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import torch

from jfb.errors import JfbError
from jfb.workloads import get_workload
from jfb.workloads.engines import StackEngine, jfb_engine
from jfb.workloads.state_tracking import RotaryBlock, group_elements, product_table, rotate, word_batch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("name", "order"), [("s3", 6), ("a5", 60), ("s5", 120)])
def test_each_group_is_closed_associative_with_identity_and_inverses(name, order):
    elements = group_elements(name)
    table = product_table(elements)
    assert len(elements) == order and len({tuple(p.tolist()) for p in elements}) == order
    assert torch.equal(table[0], torch.arange(order)) and torch.equal(table[:, 0], torch.arange(order))  # identity
    assert ((table == 0).sum(1) == 1).all()  # every element has one inverse
    a, b, c = torch.randint(0, order, (3, 500), generator=torch.Generator().manual_seed(0))
    assert torch.equal(table[table[a, b], c], table[a, table[b, c]])


def test_a5_is_the_even_permutations_and_is_not_abelian():
    elements = group_elements("a5")
    table = product_table(elements)
    assert not torch.equal(table, table.T)
    assert all(torch.linalg.det(torch.eye(5)[p]).item() == pytest.approx(1.0) for p in elements)


def test_the_targets_are_the_running_products_of_the_words():
    elements = group_elements("s5")
    words, states = word_batch(product_table(elements), 4, 9, seed=2)
    for word, state in zip(words, states):
        running = torch.arange(5)
        for g, s in zip(word, state):
            running = elements[g][running]  # g after the product so far
            assert torch.equal(elements[s], running)
    assert torch.equal(word_batch(product_table(elements), 4, 9, seed=2)[0], words)  # seeded


def test_rotary_scores_depend_on_relative_positions_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8), torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8)
    scores = rotate(q)[0, 0] @ rotate(k)[0, 0].T  # the same vectors at every position
    for offset in range(-3, 4):
        diagonal = torch.diagonal(scores, offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5)
    with pytest.raises(JfbError, match="not decoded with a cache"):
        RotaryBlock(16, 2).token_forward(torch.zeros(1, 1, 16), None)


def test_the_stack_baseline_applies_untied_blocks_once_each():
    torch.manual_seed(0)
    block = RotaryBlock(16, 2)
    engine = StackEngine(block, 3)
    assert engine.blocks[0] is block
    assert not torch.equal(engine.blocks[1].qkv.weight, engine.blocks[2].qkv.weight)
    x = torch.randn(2, 5, 16)
    solved = engine(x, torch.zeros_like(x), depth=50)
    expected = engine.blocks[2](engine.blocks[1](block(torch.zeros_like(x), x), x), x)
    assert torch.equal(solved.value, expected) and solved.iterations == 3.0
    with pytest.raises(JfbError, match="stack:K takes a number of blocks"):
        jfb_engine("stack:0")


@pytest.mark.slow
def test_a_tiny_training_learns_more_than_chance():
    """400 steps of the smoke model (the results page trains 3000 at twice the width): chance is 0.27 of the
    positions at length 8 (the first position is its own token: 1/8 + 7/8 * 1/6)."""
    workload = get_workload("state-tracking")
    trained = workload.train(workload.config(**{**workload.smoke, "steps": 400}), log=lambda _: None)
    by = {(r["length"], r["max_iter"]): r["accuracy"] for r in trained.rows}
    assert by[8, 16] >= 0.35  # measured 0.40 (width 16) and 0.44 (width 32)
    assert trained.result.final_loss < 1.6  # chance: log 6 = 1.79
    assert trained.metrics["parameters"] == sum(p.numel() for p in trained.model.parameters())


@pytest.mark.slow
def test_the_comparison_script_runs_every_model_at_about_one_parameter_count(tmp_path):
    tiny = ["--steps", "2", "--test-lengths", "8", "--test-depths", "8", "--test-words", "8"]
    subprocess.run(["bash", str(ROOT / "scripts" / "state-tracking.sh"), "s3", str(tmp_path), *tiny], check=True)
    rows = list(csv.DictReader((tmp_path / "state-tracking.csv").open()))
    assert [r["engine"] for r in rows] == ["jfb", "ift", "unroll", "stack:1", "stack:2", "stack:4"]
    parameters = [int(r["parameters"]) for r in rows]
    assert max(parameters) / min(parameters) < 1.15, parameters  # 13158 to 14838: widths 32, 24, 16
