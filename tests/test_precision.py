"""Mixed precision: T runs under the caller's autocast, the fixed-point state stays float32, and every
backward mode and solver gives the float32 gradient to within bf16's rounding."""

from __future__ import annotations

import pytest
import torch
from operators import dense_implicit_gradient, flat
from torch import nn
from training import SMALL, config_of, preempted_and_resumed

import jfb
from jfb.errors import JfbError
from jfb.precision import autocast, resolve
from jfb.train import load_checkpoint, train


class ConvOperator(nn.Module):
    """``T(u, x) = 0.5 conv2(tanh(conv1(u) + x))``: under autocast its output is bfloat16 (the last op is a conv)."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.conv2(torch.tanh(self.conv1(u) + x))


MODES = [
    ("jfb", "picard"),
    ("neumann:3", "picard"),
    ("ift", "picard"),
    ("ift:cg", "picard"),
    ("ift:gmres", "picard"),
    ("unroll", "picard"),
    ("phantom:3", "picard"),
    ("auto:every=1", "picard"),
    ("ift", "anderson"),
    ("ift", "broyden"),
]


def _gradient(op: nn.Module, x: torch.Tensor, backward: str, solver: str, dtype: torch.dtype | None):
    layer = jfb.ImplicitLayer(op, backward, solver=solver, max_iter=40, tol=1e-5, on_failure="ignore")
    op.zero_grad()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        result = layer.solve(x)
    (result.value**2).sum().backward()
    return flat(p.grad for p in op.parameters()), result


@pytest.mark.parametrize(("backward", "solver"), MODES)
def test_every_backward_mode_and_solver_works_under_bf16_autocast(backward, solver):
    op, x = ConvOperator(), torch.randn(6, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    reference, _ = _gradient(op, x, backward, solver, None)
    low, result = _gradient(op, x, backward, solver, torch.bfloat16)
    assert result.fixed_point.dtype == torch.float32  # the state is not rounded to bf16
    assert float((low - reference).norm() / reference.norm()) < 0.02
    assert float(nn.functional.cosine_similarity(low, reference, dim=0)) > 0.999


class Flattened(nn.Module):
    """An image operator on flat ``(batch, C*H*W)`` states, for the dense Jacobian of the reference."""

    def __init__(self, op: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.op, self.shape = op, shape

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.op(u.view(-1, *self.shape), x.view(-1, *self.shape)).flatten(1)


class RecordingOperator(ConvOperator):
    """Records the dtype its first convolution computes in, at every application of T."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        inner = self.conv1(u)
        self.dtypes.append(inner.dtype)
        return 0.5 * self.conv2(torch.tanh(inner + x))


@pytest.mark.parametrize(("backward", "solver"), MODES)
def test_t_runs_in_bf16_in_the_forward_solve_and_in_every_backward_linearisation(backward, solver):
    """The 2% gradient tests above would also pass if autocast were silently dropped: this one would not."""
    op, x = RecordingOperator(), torch.randn(6, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    layer = jfb.ImplicitLayer(op, backward, solver=solver, max_iter=40, tol=1e-5, on_failure="ignore")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = layer.solve(x)
    forward_calls = len(op.dtypes)
    (result.value.float() ** 2).sum().backward()  # outside the autocast region, as a training loop does
    assert result.stats.t_evals == len(op.dtypes) and forward_calls >= result.stats.forward.t_evals + 1
    assert set(op.dtypes) == {torch.bfloat16}, op.dtypes
    if backward.startswith(("ift", "neumann")):
        assert len(op.dtypes) > forward_calls  # the backward linearisation applied T too, in bf16


def test_the_ift_gradient_under_bf16_matches_a_dense_solve():
    op = Flattened(ConvOperator(2), (2, 4, 4))
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    low, _ = _gradient(op, x, "ift", "anderson", torch.bfloat16)
    with torch.no_grad():
        u_star = jfb.ImplicitLayer(op, solver="anderson", max_iter=40, tol=1e-5)(x)
    dense = flat(dense_implicit_gradient(op, u_star, x, 2 * u_star))
    assert float((low - dense).norm() / dense.norm()) < 0.02


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
@pytest.mark.parametrize("batch", [2, 40])  # (the host and the device bookkeeping)
def test_the_solvers_steps_stay_in_float32_under_autocast(solver, batch, monkeypatch):
    """Only T runs in bf16: Anderson's mixing once ran in the caller's autocast region and rounded every iterate
    to bf16, which the returned best iterate hid by promotion on large batches and not on small ones."""
    method = jfb.SolveOptions(solver=solver).method
    seen, update = [], type(method).update

    def spy(self, state, x, fx):
        seen.append(x.dtype)
        out = update(self, state, x, fx)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(type(method), "update", spy)
    op, x = ConvOperator(), torch.randn(batch, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    layer = jfb.ImplicitLayer(op, solver=solver, max_iter=8, tol=1e-9, on_failure="ignore")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        result = layer.solve(x)
    assert set(seen) == {torch.float32} and len(seen) == 14
    assert result.fixed_point.dtype == torch.float32


def test_the_layer_outside_autocast_is_untouched_by_an_earlier_autocast_call():
    op, x = ConvOperator(), torch.randn(2, 4, 6, 6)
    layer = jfb.ImplicitLayer(op, max_iter=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    out = layer(x)
    assert out.dtype == torch.float32 and torch.is_grad_enabled()
    with torch.no_grad():
        assert torch.allclose(layer(x), op(layer(x), x), atol=1e-2)  # a float32 solve, far from bf16 rounding


@pytest.mark.slow
def test_bf16_training_and_evaluation_learn_like_fp32(tmp_path):
    results = {
        precision: train(
            config_of(**SMALL, epochs=4, max_iter=4, precision=precision),
            tmp_path / precision,
            progress=False,
            log=lambda m: None,
        )
        for precision in ("fp32", "bf16")
    }
    assert results["bf16"].test_acc_last >= 60.0  # measured: fp32 67%, bf16 70% on these 300 images
    assert abs(results["bf16"].test_acc_last - results["fp32"].test_acc_last) <= 10.0
    weights = load_checkpoint(tmp_path / "bf16" / "last.pt")["model"]
    assert all(w.dtype in (torch.float32, torch.int64) for w in weights.values())  # autocast keeps fp32 weights


@pytest.mark.slow
def test_fp16_training_scales_the_loss_and_resumes_the_scaler_exactly(tmp_path):
    config = config_of(**SMALL, epochs=2, max_iter=3, precision="fp16", checkpoint_every=0)
    whole = train(config, tmp_path / "whole", progress=False, log=lambda m: None)
    scaler = load_checkpoint(tmp_path / "whole" / "last.pt")["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] == 6  # 6 steps, none overflowed
    resumed = preempted_and_resumed(config, tmp_path / "split")
    assert resumed.test_acc_last == whole.test_acc_last
    last_whole, last_split = (load_checkpoint(tmp_path / name / "last.pt") for name in ("whole", "split"))
    assert last_whole["scaler"] == last_split["scaler"]
    for key, value in last_whole["model"].items():
        assert torch.equal(value, last_split["model"][key]), key


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(JfbError, match=r"unknown precision 'fp8'.*fp32, bf16, fp16"):
        config_of(precision="fp8")
    with pytest.raises(JfbError, match="unknown precision"):
        config_of(eval_precision="half")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_gradients_match_fp32_with_a_grad_scaler(dtype):
    op = ConvOperator().cuda()
    x = torch.randn(6, 4, 6, 6, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    layer = jfb.ImplicitLayer(op, "ift", max_iter=40, tol=1e-5, on_failure="ignore")
    grads = []
    for enabled in (False, True):
        op.zero_grad()
        scaler = torch.amp.GradScaler("cuda", enabled=enabled and dtype == torch.float16)
        with torch.autocast("cuda", dtype=dtype, enabled=enabled):
            out = layer(x)
        scaler.scale((out.float() ** 2).sum()).backward()
        scaler.unscale_(torch.optim.SGD(op.parameters(), lr=0.0))
        grads.append(flat(p.grad for p in op.parameters()))
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 0.02


@pytest.mark.parametrize("amx, avx512_bf16", [(True, False), (False, True), (False, False)])
def test_auto_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, amx, avx512_bf16):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    native = amx or avx512_bf16
    assert resolve("auto", "cpu") == ("bf16" if native else "fp32")
    with autocast("cpu", "auto"):
        assert torch.is_autocast_enabled("cpu") == native
    assert config_of(eval_precision="auto").evaluation_precision == "auto"
