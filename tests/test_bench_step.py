"""`jfb bench step`: the hand-written floor computes the same step as the library, and the command's output."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from jfb.benchmarks.floor import floor_step
from jfb.benchmarks.step import NEVER_MET, OPERATOR_FORMS, SOLVE_KINDS, StepPath, _our_model
from jfb.cli.main import main
from jfb.models import build_model


@pytest.mark.parametrize("solve", SOLVE_KINDS)
@pytest.mark.parametrize("operator", OPERATOR_FORMS)
def test_floor_and_library_take_the_same_jfb_step(operator, solve):
    torch.manual_seed(0)
    base = build_model("mnist", solver="picard", backward="jfb", tol=None, max_iter=4)
    floor = copy.deepcopy(base)
    ours = _our_model(base, StepPath(operator, solve), 4, "jfb")
    images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    our_opt, floor_opt = torch.optim.SGD(ours.parameters(), lr=0.0), torch.optim.SGD(floor.parameters(), lr=0.0)

    torch.manual_seed(1)  # the same dropout mask in both heads
    tol = None if solve == "fixed" else NEVER_MET  # the floor of a tolerance path checks residuals too
    floor_loss = floor_step(floor.embedding, floor.operator, floor.head, floor_opt, images, labels, 4, tol)
    torch.manual_seed(1)
    our_loss = torch.nn.functional.cross_entropy(ours(images), labels)
    our_opt.zero_grad()
    our_loss.backward()

    assert int(ours.implicit.last_stats.iterations.max()) == 4 and ours.implicit.last_stats.forward.t_evals == 4
    assert ours.implicit.last_stats.status == ("fixed_depth" if solve == "fixed" else "max_iter")
    assert torch.allclose(our_loss, floor_loss, rtol=1e-5)
    floor_grads = dict(floor.named_parameters())
    for name, p in ours.named_parameters():
        q = floor_grads[name.replace("function_of.", "implicit.operator.")]
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name


def test_bench_step_writes_a_table_of_ratios(tmp_path, capsys):
    argv = [
        "bench",
        "step",
        "--ks",
        "2",
        "--methods",
        "jfb,ift:cg",  # CG capped at K = 2 misses its tolerance: timed, not a traceback
        "--batch-size",
        "4",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--operators",
        "module,function",
        "--solves",
        "fixed,tolerance",
        "--out",
        str(tmp_path),
        "--json",
    ]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    paths = [(o, s) for o in ("module", "function") for s in ("fixed", "tolerance")]
    assert [(r["K"], r["backward"], r["operator"], r["solve"]) for r in rows] == [
        (2, mode, *path) for mode in ("jfb", "ift:cg") for path in paths
    ]
    for r in rows:
        assert r["ratio"] == r["ours_ms"] / r["floor_ms"] and r["floor_ms"] > 0
        assert r["ratio_own_floor"] == r["ours_ms"] / r["own_floor_ms"]
        assert (r["own_floor_ms"] == r["floor_ms"]) == (r["solve"] == "fixed")  # a tolerance: its own floor
    assert "ours / its own floor" in (tmp_path / "step.md").read_text()
    assert len((tmp_path / "step.csv").read_text().splitlines()) == 1 + 8
    assert main([*argv[:2], "--operators", "lambda"]) == 2  # refused in one line
