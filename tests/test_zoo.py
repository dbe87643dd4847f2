"""The side-by-side harness: torch-jfb and torchdeq engines on the same model compute the same thing."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from jfb.benchmarks.torchdeq_engine import TorchdeqEngine
from jfb.benchmarks.zoo import ZooBenchSettings, compare_engines, engine_factory, zoo_table
from jfb.errors import JfbError
from jfb.train.engine import backward_missed
from jfb.workloads import get_workload
from jfb.workloads.prefix_sums import prefix_sum_batch

pytest.importorskip("torchdeq")


def _gradients(engine: str, **changes) -> tuple[float, list[torch.Tensor]]:
    workload = get_workload("prefix-sums")
    config = workload.config(width=16, **changes)
    model = workload.model(config, engine_factory(engine, config.eval_tol))
    loss, _ = workload.loss(config)(model, prefix_sum_batch(8, 16, seed=0))
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(("ours", "theirs", "rtol"), [("jfb", "torchdeq-jfb", 1e-5), ("ift", "torchdeq-ift", 2e-3)])
def test_same_model_same_gradient_under_both_libraries(ours, theirs, rtol):
    """JFB: both apply T once with grad at the same u*; IFT: both solve the same adjoint system (to tolerance)."""
    loss_ours, grads_ours = _gradients(ours, depth=40)
    loss_theirs, grads_theirs = _gradients(theirs, depth=40)
    assert loss_ours == pytest.approx(loss_theirs, rel=1e-6)
    for a, b in zip(grads_ours, grads_theirs, strict=True):
        assert torch.allclose(a, b, rtol=rtol, atol=rtol * a.abs().max().item())


@pytest.mark.parametrize(("ift", "tol", "missed"), [(True, 0.0, True), (True, 1e6, False), (False, 0.0, False)])
def test_torchdeqs_backward_misses_are_counted_against_its_own_tolerance(ift, tol, missed):
    workload = get_workload("prefix-sums")
    config = workload.config(width=16, depth=40)
    model = workload.model(config, lambda op: TorchdeqEngine(op, ift, config.eval_tol, backward_tol=tol))
    residuals: list[float] = []
    model.engine.backward_writer = lambda info: residuals.append(float(info["abs_lowest"].max()))
    loss, _ = workload.loss(config)(model, prefix_sum_batch(8, 16, seed=0))
    loss.backward()
    assert backward_missed(model) is missed and len(residuals) == int(ift)  # the user's writer still called
    assert all(0 < r < 1e6 for r in residuals)


def test_engines_start_from_the_same_weights_and_train_alike():
    workload = get_workload("chains")
    config = workload.config(length=6, chains=8, steps=5, depth=30, eval_depth=60, test_lengths=(6,))
    rows, cases = compare_engines(workload, config, ("jfb", "torchdeq-jfb"))
    assert [(c["engine"], c["length"]) for c in cases] == [("jfb", 6), ("torchdeq-jfb", 6)]
    assert [r["engine"] for r in rows] == ["jfb", "torchdeq-jfb"]
    assert rows[0]["final_train_loss"] == pytest.approx(rows[1]["final_train_loss"], rel=1e-4)
    assert rows[0]["time_vs_first"] == 1.0 and rows[0]["saved_mib"] == rows[1]["saved_mib"]


def test_a_training_that_stops_names_its_engine():
    """A non-finite loss stops the zoo with the engine named (the first of the step's shuffled order to see it)."""
    workload = get_workload("prefix-sums")
    config = workload.config(width=8, depth=4, steps=3, test_bits=(8,), test_depths=(4,))
    nan_strings = torch.full((4, 1, 8), math.nan)
    poisoned = dataclasses.replace(
        workload, batches=lambda config: lambda step: (nan_strings, prefix_sum_batch(4, 8, step)[1])
    )
    with pytest.raises(JfbError, match=r"^engine '(jfb|unroll)': a non-finite loss \(nan\) at step 0"):
        compare_engines(poisoned, config, ("jfb", "unroll"))


def test_unknown_engine_is_refused_before_training_naming_torchdeqs_engines_too():
    with pytest.raises(JfbError, match="unknown engine 'torchdeq'") as refused:
        ZooBenchSettings(engines=("jfb", "torchdeq"))
    assert "torchdeq-jfb, torchdeq-ift" in str(refused.value) and "did you mean 'torchdeq-jfb'" in str(refused.value)


@pytest.mark.slow
def test_zoo_table_writes_every_engine_of_every_workload(tmp_path):
    settings = ZooBenchSettings(workloads=("chains", "lm"), steps=6, out=str(tmp_path))
    report = zoo_table(settings, progress=False, log=lambda _: None)
    assert [(r["workload"], r["engine"]) for r in report.rows] == [
        (w, e) for w in ("chains", "lm") for e in ("jfb", "torchdeq-jfb", "ift", "torchdeq-ift", "unroll")
    ]
    by = {(r["workload"], r["engine"]): r for r in report.rows}
    for workload in ("chains", "lm"):
        assert by[workload, "jfb"]["final_train_loss"] == pytest.approx(
            by[workload, "torchdeq-jfb"]["final_train_loss"], rel=1e-3
        )
    assert (tmp_path / "zoo.csv").read_text().count("\n") == 11
