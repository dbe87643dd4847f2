"""The core API: typed solve options, overrides, registries, states of any shape, statuses, host syncs."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from operators import TanhOperator, dense_implicit_gradient, flat, tanh_problem
from torch import nn

import jfb
from jfb.backward import JFB
from jfb.solvers import Solver, driver


def _tanh_layer(**settings):
    torch.manual_seed(0)
    return jfb.ImplicitLayer(TanhOperator(6, 0.7), **settings), torch.randn(5, 6, dtype=torch.float64)


# --- SolveOptions and overrides -------------------------------------------------------------


def test_solve_options_are_frozen_validated_and_replace_drops_the_old_solvers_options():
    options = jfb.SolveOptions(solver="anderson", solver_options={"memory": 3})
    assert options.method == jfb.solvers.Anderson(memory=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.tol = 1.0
    assert options.replace(solver="picard").solver_options == {}
    assert options.replace(tol=1e-6).method == jfb.solvers.Anderson(memory=3)
    with pytest.raises(jfb.JfbError, match="tol must be a number > 0"):
        options.replace(tol=-1.0)


def test_per_call_and_block_overrides_leave_the_layers_options_untouched():
    layer, x = _tanh_layer(solver="picard", tol=1e-3, max_iter=100)
    before = layer.options
    with torch.no_grad():
        layer(x)
        loose = layer.last_stats.t_evals
        layer(x, solve=dict(tol=1e-10))
        tight = layer.last_stats.t_evals
        with layer.solving(tol=1e-10, max_iter=7):
            layer(x)
            assert layer.last_stats.t_evals == 7 and layer.last_stats.options.tol == 1e-10
        layer(x)
    assert loose < tight and layer.last_stats.t_evals == loose
    assert layer.options is before


def test_eval_options_apply_in_eval_mode_only():
    layer, x = _tanh_layer(solver="picard", tol=1e-3, max_iter=100, check_every=1)
    layer.eval_options = layer.options.replace(tol=None, max_iter=4)
    with torch.no_grad():
        layer.eval()
        layer(x)
        assert layer.last_stats.status == jfb.Status.FIXED_DEPTH and layer.last_stats.t_evals == 4
        layer.train()
        layer(x)
        assert layer.last_stats.status == jfb.Status.CONVERGED


def test_layer_attributes_cannot_be_set_around_the_options():
    layer, _ = _tanh_layer()
    with pytest.raises(AttributeError, match=r"layer.options = layer.options.replace\(tol=...\)"):
        layer.tol = -1.0
    with pytest.raises(jfb.JfbError, match=r"options must be a jfb\.SolveOptions"):
        layer.options = {"tol": 1e-3}
    with pytest.raises(jfb.JfbError, match="either options= or solve settings"):
        jfb.ImplicitLayer(lambda u, x: u, options=jfb.SolveOptions(), tol=1e-3)
    unroll = jfb.ImplicitLayer(lambda u, x: 0.5 * u + x, backward="unroll", solver="picard")
    with pytest.raises(jfb.JfbError, match="pass solver='picard'"):
        unroll(torch.ones(2, 2), solve=dict(solver="anderson"))


def test_assigning_the_backward_mode_changes_the_gradient_to_the_exact_one():
    op, x, head = tanh_problem(dim=6, contraction=0.7, batch=3)
    layer = jfb.ImplicitLayer(op, solver="anderson", tol=1e-12, max_iter=200)
    u_star = layer(x).detach()
    exact = flat(dense_implicit_gradient(op, u_star, x, head))
    jfb_grad = flat(torch.autograd.grad((head * layer(x)).sum(), list(op.parameters())))
    assert float((jfb_grad - exact).norm() / exact.norm()) > 1e-2  # JFB is not the exact gradient here
    for spelling in ("backward", "backward_mode"):
        layer.backward = "jfb"
        setattr(layer, spelling, "ift:tol=1e-12")
        assert repr(layer.backward) == repr(layer.backward_mode) == "ift:fixed_point:tol=1e-12"
        result = layer.solve(x)
        got = flat(torch.autograd.grad((head * result.value).sum(), list(op.parameters())))
        assert float((got - exact).norm() / exact.norm()) < 1e-8 and result.stats.j_matvecs > 0


def test_a_backward_mode_is_validated_when_assigned_and_its_state_follows_it():
    layer, _ = _tanh_layer(solver="anderson")
    with pytest.raises(jfb.JfbError, match="unknown backward mode 'ifft'"):
        layer.backward = "ifft"
    with pytest.raises(jfb.JfbError, match="pass solver='reversible'"):
        layer.backward = "reversible"
    assert repr(layer.backward) == "jfb" and "backward_state" not in layer.state_dict()
    layer.backward = "auto"
    assert "backward_state" in layer.state_dict()
    layer.backward = jfb.backward.JFB()
    assert "backward_state" not in layer.state_dict() and repr(layer.backward) == "jfb"


# --- fixed depth and host synchronisation -----------------------------------------------------


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_fixed_depth_runs_exactly_max_iter_and_reports_the_last_steps_residual(solver):
    layer, x = _tanh_layer(solver=solver, tol=None, max_iter=6)
    with torch.no_grad():
        u = layer(x)
        stats = layer.last_stats
        u5 = layer(x, solve=dict(max_iter=5))
    assert stats.status == "fixed_depth" and stats.t_evals == 6 and stats.iterations.tolist() == [6] * 5
    assert not bool(stats.converged.any())
    if solver == "picard":  # u = T(u5): the residual reported is ||T(u5) - u5|| = ||u - u5||
        assert torch.allclose(stats.abs_residual, (u - u5).norm(dim=1))


class _HostTransfers:
    """Counts the ways a tensor value reaches the host, and where in a solve they happen."""

    NAMES = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch):
        self.count, self.at_calls = 0, []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def wrapper(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)

        return wrapper

    def operator(self, op):
        def T(u, x):
            self.at_calls.append(self.count)
            return op(u, x)

        return T

    @property
    def in_loop(self) -> int:
        return self.at_calls[-1] - self.at_calls[0]


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
@pytest.mark.parametrize("check_every, tol", [(1, 1e-9), (4, 1e-9), (1, None)])
def test_host_synchronisations_in_the_loop_are_bounded_by_the_checks(monkeypatch, solver, check_every, tol):
    """The device bookkeeping's reads (on a GPU each one waits for the queue); small CPU batches keep theirs on the
    host, where a read costs nothing (tests/test_host_tracker.py)."""
    monkeypatch.setattr(driver, "host_trackable", lambda *args: False)
    torch.manual_seed(0)
    op, x = TanhOperator(16, 0.9), torch.randn(8, 16, dtype=torch.float64)
    transfers = _HostTransfers(monkeypatch)
    layer = jfb.ImplicitLayer(transfers.operator(op), solver=solver, tol=tol, max_iter=40, check_every=check_every)
    with torch.no_grad():
        layer(x)
    evaluations = layer.last_stats.t_evals
    if tol is None:
        assert transfers.in_loop == 0 and transfers.count <= 1  # one at the end, for the status
    else:
        assert layer.last_stats.status == "converged"
        assert transfers.in_loop <= math.ceil((evaluations - 1) / check_every), (transfers.in_loop, evaluations)


# --- registries and solver instances -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Damped(Solver):
    """Krasnoselskii-Mann iteration x <- (1 - a) x + a T(x): a toy solver in a few lines."""

    a: float = 0.5
    name = "test-damped"

    def update(self, state, x, fx):
        return (1 - self.a) * x + self.a * fx


def test_a_registered_solver_is_used_by_name_with_its_options():
    jfb.register_solver("test-damped", Damped, replace=True)
    layer, x = _tanh_layer(solver="test-damped", solver_options={"a": 0.8}, tol=1e-10, max_iter=500)
    with torch.no_grad():
        u = layer(x)
    assert layer.last_stats.status == "converged" and layer.options.method == Damped(0.8)
    with torch.no_grad():
        assert float((layer.operator(u, x) - u).norm(dim=1).max()) < 1e-9
    with pytest.raises(jfb.JfbError, match="unknown option of solver 'test-damped' 'b'; choose one of a"):
        jfb.SolveOptions(solver="test-damped", solver_options={"b": 1})
    with pytest.raises(jfb.JfbError, match="registered already"):
        jfb.register_solver("test-damped", Damped)


def test_solver_instances_and_registered_backward_modes():
    class Halved(JFB):
        name = "test-halved"

        def attach(self, T, u_star, stats):
            return 0.5 * super().attach(T, u_star, stats)

    jfb.register_backward("test-halved", Halved, replace=True)
    layer, x = _tanh_layer(solver=jfb.solvers.Anderson(memory=3), backward="test-halved", tol=1e-10)
    reference, _ = _tanh_layer(solver="anderson", backward="jfb", tol=1e-10)
    assert torch.allclose(layer(x), 0.5 * reference(x))
    assert layer.options.solver_name == "anderson"


def test_a_mode_registered_from_outside_uses_every_capability_flag(monkeypatch):
    """Adding a mode is one class and one ``register_backward``: its flags alone decide what the layer does."""

    @dataclasses.dataclass
    class TracedStats(jfb.backward.BackwardStats):
        traces: list = dataclasses.field(default_factory=list)  # the mode's own statistics live with it

    class Recorded(jfb.backward.BackwardMode):  # backpropagates through the recorded Picard iterations
        name = "test-recorded"
        records_forward_graph = True
        forward_solver = "picard"
        supports_second_order = True
        lockstep_safe = False
        transforms = frozenset({"grad"})
        stats_type = TracedStats

        def solve(self, F, x0, options, agree, observe):  # owns its forward solve: the trace reaches attach
            u_star, stats, _ = super().solve(F, x0, options, agree, observe)
            return u_star, stats, ("steps", stats.t_evals)

        def attach(self, T, u_star, stats):
            stats.traces.append(T.trace)
            return T(u_star)

    jfb.register_backward("test-recorded", Recorded)
    try:
        layer, x = _tanh_layer(solver="picard", backward="test-recorded", tol=None, max_iter=30)
        unrolled, _ = _tanh_layer(solver="picard", backward="unroll", tol=None, max_iter=30)
        x.requires_grad_()
        (ours,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)  # records_forward_graph
        (reference,) = torch.autograd.grad(unrolled(x).square().sum(), x, create_graph=True)
        assert torch.allclose(ours, reference, rtol=0, atol=1e-12) and ours.requires_grad  # supports_second_order
        assert layer.last_stats.backward.traces == [("steps", 30)]  # stats_type, and the trace of solve
        with pytest.raises(jfb.JfbError, match="uses the iterations of solver 'picard'"):
            _tanh_layer(solver="anderson", backward="test-recorded")[0](x)  # forward_solver
        with pytest.raises(jfb.JfbError, match=r"use one of .*test-recorded"):  # supports_second_order offers it
            neumann, _ = _tanh_layer(solver="picard", backward="neumann:2", tol=None, max_iter=30)
            (g,) = torch.autograd.grad(neumann(x).square().sum(), x, create_graph=True)
            g.sum().backward()
        jacobian = torch.func.jacrev(lambda x: layer(x[None])[0])(x[0].detach())  # transforms: grad offered
        assert torch.allclose(jacobian, torch.func.jacrev(lambda x: unrolled(x[None])[0])(x[0].detach()), atol=1e-12)
        with pytest.raises(jfb.JfbError, match=r"does not run under torch\.func vmap; use one of jfb"):  # not vmap
            torch.func.vmap(layer)(x[None].detach())
        monkeypatch.setattr("jfb.lockstep.distributed_world_size", lambda: 2)
        with pytest.raises(jfb.JfbError, match="cannot run with collectives inside the operator"):  # lockstep_safe
            _tanh_layer(solver="picard", backward="test-recorded", lockstep=True)[0](x)
    finally:
        jfb.backward.BACKWARD_MODES._factories.pop("test-recorded")


# --- states of any shape -----------------------------------------------------------------------


class MLPOperator(nn.Module):
    """u (latent, 8-d) = tanh(W u + U x), x is 20-d."""

    def __init__(self, latent: int = 8, inputs: int = 20) -> None:
        super().__init__()
        self.W, self.U = nn.Linear(latent, latent, bias=False), nn.Linear(inputs, latent)
        with torch.no_grad():
            self.W.weight.mul_(0.5 / torch.linalg.matrix_norm(self.W.weight, ord=2))

    def forward(self, u, x):
        return torch.tanh(self.W(u) + self.U(x))


def test_latent_shape_other_than_the_input_trains_and_a_missing_one_is_named():
    torch.manual_seed(0)
    layer = jfb.ImplicitLayer(MLPOperator(), latent_shape=(8,), tol=1e-6)
    head = nn.Linear(8, 3)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    optimizer = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(30):
        result = layer.solve(x)
        loss = nn.functional.cross_entropy(head(result.value), y)
        optimizer.zero_grad(), loss.backward(), optimizer.step()
        losses.append(float(loss))
    assert result.fixed_point.shape == (64, 8) and losses[-1] < 0.8 * losses[0]
    guessing = jfb.ImplicitLayer(MLPOperator())
    with pytest.raises(jfb.JfbError, match=r"failed on u0 = zeros shaped like x \(64, 20\).*pass latent_shape="):
        guessing(x)
    u = guessing(x, u0=lambda x: x.new_zeros(x.shape[0], 8))  # or a function of x
    assert u.shape == (64, 8)


class CoupledOperator(nn.Module):
    """A tuple state (a: (B, 3), b: (B, 2, 2)) whose parts feed each other."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.A = nn.Parameter(0.3 * torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.B = nn.Parameter(0.3 * torch.randn(4, 3, generator=g, dtype=torch.float64))
        self.C = nn.Parameter(0.3 * torch.randn(3, 3, generator=g, dtype=torch.float64))

    def forward(self, u, x):
        a, b = u
        b_flat = b.reshape(b.shape[0], 4)
        return torch.tanh(b_flat @ self.A.T + a @ self.C.T + x), torch.tanh(a @ self.B.T).reshape(-1, 2, 2) + 0.1


def flat_op_module(op, layout):
    """The operator on flat states, as a module (for the dense reference)."""

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.op = op

        def forward(self, v, x):
            return layout.flatten(self.op(layout.unflatten(v), x))

    return Flat()


@pytest.mark.parametrize("backward", ["ift", "ift:cg", "ift:fixed_point"])
def test_tuple_state_gradients_match_a_dense_implicit_solve(backward):
    op, x = CoupledOperator(), torch.randn(4, 3, dtype=torch.float64)
    heads = (torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, 2, dtype=torch.float64))
    layer = jfb.ImplicitLayer(
        op,
        backward=jfb.get_backward(backward + ("" if ":" in backward else ":gmres") + ":tol=1e-12"),
        latent_shape=((3,), (2, 2)),
        tol=1e-13,
        max_iter=300,
    )
    a, b = layer(x)
    assert a.shape == (4, 3) and b.shape == (4, 2, 2)
    op.zero_grad()
    ((heads[0] * a).sum() + (heads[1] * b).sum()).backward()
    grad = flat(p.grad for p in op.parameters())
    dense = flat(
        dense_implicit_gradient(
            flat_op_module(op, jfb.state.StateLayout((a, b))),
            torch.cat([a.detach(), b.detach().reshape(4, 4)], 1),
            x,
            torch.cat([heads[0], heads[1].reshape(4, 4)], 1),
        )
    )
    assert layer.last_stats.backward.status == "converged"
    assert (grad - dense).norm() / dense.norm() < 1e-8


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_tuple_states_reach_the_same_fixed_point_with_every_solver(solver):
    op, x = CoupledOperator(), torch.randn(4, 3, dtype=torch.float64)
    u0 = (torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, 2, 2, dtype=torch.float64))
    with torch.no_grad():
        picard = jfb.ImplicitLayer(op, solver="picard", tol=1e-12, max_iter=500)(x, u0)
        other = jfb.ImplicitLayer(op, solver=solver, tol=1e-12, max_iter=500)(x, u0)
    assert all(torch.allclose(p, o, atol=1e-10) for p, o in zip(picard, other))


def test_dict_inputs_work_with_freezing():
    layer = jfb.ImplicitLayer(
        lambda u, x: x["a"] * u + x["c"], solver="picard", tol=1e-9, max_iter=500, freeze_converged=True
    )
    x = {"a": torch.tensor([[0.1], [0.9]], dtype=torch.float64), "c": torch.ones(2, 1, dtype=torch.float64)}
    with torch.no_grad():
        u = layer(x)
    assert torch.allclose(u, 1 / (1 - x["a"]), atol=1e-7)
    assert layer.last_stats.iterations[0] < layer.last_stats.iterations[1]


# --- statuses, BatchNorm for plain functions, eval-mode semantics ------------------------------


def test_one_status_vocabulary_that_compares_as_strings():
    layer, x = _tanh_layer(backward="ift", tol=1e-10)
    assert layer(x).grad_fn is not None
    assert layer.last_stats.backward.status is jfb.Status.NOT_RUN
    layer(x).sum().backward()
    for status in (layer.last_stats.status, layer.last_stats.backward.status):
        assert isinstance(status, jfb.Status) and status == "converged"


def test_batch_norm_statistics_update_once_for_a_plain_function_operator():
    torch.manual_seed(0)
    norm, linear = nn.BatchNorm1d(6), nn.Linear(6, 6)
    with torch.no_grad():
        linear.weight.mul_(0.3)
    layer = jfb.ImplicitLayer(
        lambda u, x: 0.5 * torch.tanh(norm(linear(u))) + x, solver="picard", tol=1e-6, max_iter=50
    )
    layer(torch.randn(16, 6)).sum().backward()
    assert layer.last_stats.t_evals > 5
    assert int(norm.num_batches_tracked) == 1
    assert norm.track_running_stats  # restored


def test_eval_mode_with_grad_attaches_the_backward_mode_and_no_grad_returns_u_star():
    layer, x = _tanh_layer(tol=1e-12, max_iter=200)
    layer.eval()
    attached = layer(x)
    with torch.no_grad():
        u_star = layer(x)
    assert attached.grad_fn is not None and u_star.grad_fn is None
    with torch.no_grad():
        assert torch.allclose(attached, layer.operator(u_star, x))  # JFB: T(u*)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attached.sum().backward()


@pytest.mark.slow
def test_the_default_ift_backward_runs_under_torch_compile():
    """The default linear solve needs only J^T products (no double backward), so compiled models train."""
    torch.manual_seed(0)
    op, x = MLPOperator(latent=8, inputs=8), torch.randn(4, 8)
    layer = jfb.ImplicitLayer(op, backward="ift", solver="picard", tol=1e-8, max_iter=100)
    torch.compile(layer, backend="aot_eager")(x).square().sum().backward()
    compiled = flat(p.grad for p in op.parameters())
    op.zero_grad()
    layer(x).square().sum().backward()
    assert layer.last_stats.backward.status == "converged"
    assert torch.allclose(compiled, flat(p.grad for p in op.parameters()), atol=1e-6)
