"""backward="auto": the check measures what it says, escalates on a lost contraction, and is resumable."""

from __future__ import annotations

import json

import pytest
import torch
from operators import TanhOperator
from training import SMALL, config_of, preempted_and_resumed

import jfb
from jfb.backward import Autopilot, GradientCheck
from jfb.errors import JfbError
from jfb.train import load_checkpoint, train


def _spread_operator(contraction: float, dim: int = 16) -> TanhOperator:
    """tanh(W u + U x) with W symmetric, eigenvalues spread evenly over [-contraction, contraction]."""
    op = TanhOperator(dim, contraction, seed=1)
    _set_spectrum(op, contraction)
    return op


def _set_spectrum(op: TanhOperator, contraction: float) -> None:
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(op.W.shape, generator=g, dtype=torch.float64))
    spectrum = torch.linspace(-contraction, contraction, op.W.shape[0], dtype=torch.float64)
    with torch.no_grad():
        op.W.copy_(q @ torch.diag(spectrum) @ q.T)
        op.b.zero_()


def _call(layer, op, seed: int = 0) -> list[GradientCheck]:
    """One training call; the checks its backward pass made."""
    x = 0.1 * torch.randn(8, op.W.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    result = layer.solve(x.requires_grad_())
    result.value.pow(2).sum().backward()
    return result.checks


def _calls(layer, op, steps: int) -> list[GradientCheck]:
    return [check for step in range(steps) for check in _call(layer, op, step)]


def test_the_check_is_the_cosine_of_the_jfb_and_implicit_directions_from_dense_solves():
    op = _spread_operator(0.8)
    auto = Autopilot(every=1, check_iters=100)
    layer = jfb.ImplicitLayer(op, auto, solver="anderson", tol=1e-12, max_iter=200)
    x = 0.1 * torch.randn(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x.requires_grad_()
    result = layer.solve(x)
    result.value.pow(2).sum().backward()
    (check,) = result.checks
    u_star = result.fixed_point
    g = 2 * u_star
    w = torch.stack(
        [
            torch.linalg.solve(
                (
                    torch.eye(16, dtype=torch.float64)
                    - torch.autograd.functional.jacobian(
                        lambda v, i=i: op(v[None], x[i : i + 1].detach())[0], u_star[i]
                    )
                ).T,
                g[i],
            )
            for i in range(4)
        ]
    )
    inputs = [*op.parameters(), x]
    out = op(u_star, x)
    jfb_dir = torch.cat([t.reshape(-1) for t in torch.autograd.grad(out, inputs, g, retain_graph=True)])
    ift_dir = torch.cat([t.reshape(-1) for t in torch.autograd.grad(out, inputs, w)])
    cosine = float(jfb_dir @ ift_dir / (jfb_dir.norm() * ift_dir.norm()))
    assert check.cosine == pytest.approx(cosine, abs=1e-6) and check.descent
    assert 0.6 < check.contraction < 0.85  # power iteration on J^T: below the bound 0.8 times tanh' <= 1
    assert check.switched_to is None and check.mode == "jfb"


@pytest.mark.parametrize("level", [1, 2])
def test_the_check_sees_dl_du_star_at_every_level(level: int) -> None:
    """At neumann:K and IFT the check still measures from dl/du* (not from the gradient the mode made of it):
    the same call gives the same cosine at every level."""
    cosines = []
    for at in (0, level):
        op = _spread_operator(0.8)
        auto = Autopilot(every=1, check_iters=100, patience=1000)
        auto.level = at
        layer = jfb.ImplicitLayer(op, auto, solver="anderson", tol=1e-12, max_iter=200)
        (check,) = _call(layer, op)
        assert check.mode == repr(auto.levels[at])
        cosines.append(check.cosine)
    assert cosines[1] == pytest.approx(cosines[0], abs=1e-9)


def test_it_escalates_when_contraction_is_lost_and_comes_back_when_it_returns():
    op = _spread_operator(0.5)
    auto = Autopilot(every=1, patience=2, check_iters=20)
    layer = jfb.ImplicitLayer(op, auto, solver="anderson", tol=1e-8, max_iter=100, on_failure="ignore")
    checks = _calls(layer, op, 3)
    assert auto.level == 0 and len(checks) == 3 and all(c.descent and c.cosine > 0.9 for c in checks)
    _set_spectrum(op, 1.5)  # no longer a contraction: JFB's direction is poor
    checks = _calls(layer, op, 4)
    assert [c.switched_to for c in checks] == [None, "neumann:4", None, "ift:gmres"]
    assert all(c.cosine < 0.5 and c.contraction > 1 for c in checks)
    _set_spectrum(op, 0.5)
    assert [c.switched_to for c in _calls(layer, op, 4)] == [None, "neumann:4", None, "jfb"]
    assert repr(auto) == "auto(jfb)"


def test_it_never_escalates_on_a_contraction_and_checks_only_every_nth_call():
    op = _spread_operator(0.6)
    auto = Autopilot(every=3)
    layer = jfb.ImplicitLayer(op, auto, solver="anderson", tol=1e-8, max_iter=100)
    checks = _calls(layer, op, 9)
    assert [c.call for c in checks] == [3, 6, 9] and auto.level == 0
    with torch.no_grad():
        layer(torch.zeros(2, 16, dtype=torch.float64))
    assert auto.calls == 9  # calls without grad are not counted


def test_its_state_travels_in_the_layer_state_dict_alone():
    op = _spread_operator(0.5)
    trained = jfb.ImplicitLayer(op, "auto:every=1:patience=1", solver="anderson", tol=1e-8, max_iter=100)
    _set_spectrum(op, 1.5)
    _calls(trained, op, 2)  # escalated twice: JFB -> neumann:4 -> ift:gmres
    assert repr(trained.backward_mode) == "auto(ift:gmres)"
    state = trained.state_dict()
    assert state["backward_state"].tolist() == [2, 2, 0, 0]
    fresh = jfb.ImplicitLayer(_spread_operator(0.5), "auto:every=1:patience=1", solver="anderson", tol=1e-8)
    fresh.load_state_dict(state)
    assert repr(fresh.backward_mode) == "auto(ift:gmres)" and fresh.backward_mode.calls == 2


def test_a_state_dict_without_the_autopilot_state_loads_with_a_warning():
    layer = jfb.ImplicitLayer(_spread_operator(0.5), "auto")
    old = {k: v for k, v in layer.state_dict().items() if k != "backward_state"}  # as torch-jfb 0.1 wrote it
    with pytest.warns(UserWarning, match="no backward_state"):
        layer.load_state_dict(old)
    assert layer.backward_mode.level == 0


@pytest.mark.parametrize(
    "spec", ["auto:threshold=1.5", "auto:threshold=0.9:recover=0.8", "auto:every=0", "auto:patience=0"]
)
def test_bad_autopilot_settings_are_refused(spec):
    with pytest.raises(JfbError):
        jfb.ImplicitLayer(lambda u, x: u, spec)


@pytest.mark.slow
def test_training_with_auto_records_every_check_and_resumes_it_exactly(tmp_path):
    config = config_of(**SMALL, epochs=2, max_iter=4, backward="auto:every=2", checkpoint_every=0)
    whole = train(config, tmp_path / "whole", progress=False, log=lambda m: None)
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    checks = [c for r in records for c in json.loads(r["gradient_checks"])]
    assert [c["call"] for c in checks] == [2, 4, 6]  # 3 steps per epoch, every second one checked
    assert all(c["descent"] for c in checks) and records[-1]["backward_in_use"] == "auto(jfb)"
    assert records[0]["gradient_cosine_min"] == min(c["cosine"] for c in json.loads(records[0]["gradient_checks"]))
    resumed = preempted_and_resumed(config, tmp_path / "split")
    assert resumed.test_acc_last == whole.test_acc_last
    last, uninterrupted = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("split", "whole"))
    assert last["implicit.backward_state"].tolist() == [0, 6, 3, 0]  # level, calls, good, bad
    assert last.keys() == uninterrupted.keys() and all(torch.equal(last[k], uninterrupted[k]) for k in last)
    split_records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    split_checks = [c for r in split_records for c in json.loads(r["gradient_checks"])]
    assert [(c["call"], c["switched_to"]) for c in split_checks] == [(c["call"], c["switched_to"]) for c in checks]
    assert [c["cosine"] for c in split_checks] == pytest.approx([c["cosine"] for c in checks], abs=1e-5)
