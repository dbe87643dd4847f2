"""Export at a fixed depth: programs and ONNX files that match eager, shipped models that keep their accuracy,
and exports that cannot be faithful refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import jfb
from jfb.cli.main import main
from jfb.deploy import export_onnx, export_program, exported_solves
from jfb.errors import JfbError
from jfb.pretrained import index
from jfb.solvers.host_tracker import HOST_BATCH


class TinyDeq(nn.Module):
    """A conv DEQ classifier: the layer solves at a fixed depth in eval mode, to a tolerance in training."""

    def __init__(self, eval_tol: float | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(1, 4, 3, padding=1)
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        with torch.no_grad():
            self.inner.weight.mul_(0.3)
        evaluation = jfb.SolveOptions(solver="anderson", tol=eval_tol, max_iter=12)
        self.layer = jfb.ImplicitLayer(lambda u, x: torch.tanh(self.inner(u) + x), eval_options=evaluation)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, images):
        return self.head(self.layer(self.embed(images)).flatten(1))


@pytest.mark.parametrize("batch", [5, HOST_BATCH + 1])  # (the solve's bookkeeping changes kind at HOST_BATCH)
@pytest.mark.slow
def test_an_exported_program_matches_eager_at_another_batch_size(batch):
    """Exported at batch 2, run at 5 and past the host bookkeeping's batch limit: the trace keeps no guard on it."""
    model = TinyDeq().eval()
    program = export_program(model, (torch.randn(2, 1, 8, 8),))
    images = torch.randn(batch, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(program.module()(images), model(images), atol=1e-6)


@pytest.mark.slow
def test_a_depth_overrides_the_layers_own():
    model = TinyDeq(eval_tol=1e-4).eval()
    program = export_program(model, (torch.randn(2, 1, 8, 8),), depth=7)
    images = torch.randn(3, 1, 8, 8)
    with torch.no_grad(), exported_solves(model, 7):
        assert torch.equal(program.module()(images), model(images))
        assert model.layer.last_stats.iterations.tolist() == [7, 7, 7]


def _picard_to_tolerance() -> TinyDeq:
    model = TinyDeq(eval_tol=1e-5)
    model.layer.eval_options = model.layer.eval_options.replace(solver="picard", max_iter=60)
    return model.eval()


@pytest.mark.slow
def test_a_tolerance_is_exported_as_a_loop_that_stops_where_eager_does():
    """Picard to tol=1e-5 inside the program: inputs of other scales take other numbers of iterations, and the
    program takes the same ones (a traced depth would be wrong for all but the example)."""
    model = _picard_to_tolerance()
    program = export_program(model, (torch.randn(2, 1, 8, 8),)).module()
    iterations = set()
    for scale in (0.01, 1.0, 5.0):
        images = scale * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(int(10 * scale)))
        with torch.no_grad():
            eager = model(images)
            iterations.add(int(model.layer.last_stats.iterations.max()))
            assert torch.allclose(program(images), eager, atol=1e-6)
    assert len(iterations) > 1


def test_a_traced_tolerance_with_another_solver_is_refused():
    model = TinyDeq(eval_tol=1e-4).eval()  # Anderson to a tolerance
    with pytest.raises(JfbError, match=r"a traced solve that stops at a tolerance runs Picard iterations, not"):
        export_program(model, (torch.randn(2, 1, 8, 8),))


@pytest.mark.slow
def test_an_onnx_file_runs_in_onnx_runtime_like_eager(tmp_path):
    import onnxruntime

    model = TinyDeq()
    with pytest.raises(JfbError, match=r"solves with 'anderson', which does not export to ONNX: .*solver='picard'"):
        export_onnx(model, (torch.randn(2, 1, 8, 8),), tmp_path / "tiny.onnx")
    path = export_onnx(model, (torch.randn(2, 1, 8, 8),), tmp_path / "tiny.onnx", solver="picard")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(6, 1, 8, 8)
    (out,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad(), exported_solves(model, solver="picard"):
        assert torch.allclose(torch.from_numpy(out), model(images), atol=1e-5)


@pytest.mark.slow
def test_an_onnx_file_stops_at_the_tolerance_in_onnx_runtime(tmp_path):
    import onnxruntime

    model = _picard_to_tolerance()
    path = export_onnx(model, (torch.randn(2, 1, 8, 8),), tmp_path / "tol.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for scale in (0.01, 5.0):
        images = scale * torch.randn(3, 1, 8, 8)
        (out,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(out), model(images), atol=1e-5)


def _export(tmp_path, capsys, *args) -> dict:
    assert main(["export", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("form", ["onnx"])  # pt2: docs/results/deploy/exports.jsonl (the guide's command runs it)
def test_the_shipped_mnist_model_keeps_its_published_accuracy(tmp_path, capsys, form):
    summary = _export(tmp_path, capsys, "mnist-default", "--format", form, "--out", str(tmp_path / f"m.{form}"))
    published = index()["mnist-default"]["value"]
    assert summary["test_images"] == 10_000
    assert summary["exported_test_acc"] == summary["eager_test_acc"] == published
    assert summary["agreement"] == 1.0 and summary["max_logit_difference"] < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(("name", "form"), [("prefix-sums", "onnx"), ("chains", "pt2")])  # all: deploy/exports.jsonl
def test_shipped_workloads_export_with_the_same_predictions(tmp_path, capsys, name, form):
    """chains: two inputs, its sparse adjacency matrix passed dense to the exported program."""
    summary = _export(tmp_path, capsys, name, "--format", form, "--out", str(tmp_path / f"{name}.{form}"))
    assert summary["agreement"] == 1.0 and summary["max_logit_difference"] < 1e-4
