"""The weights shipped with the package: each evaluates, by name, to the metric it reported when trained."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from jfb.cli.main import main
from jfb.errors import JfbError
from jfb.pretrained import FOLDER, from_pretrained, index, pretrained_path
from jfb.train.checkpoint import load_checkpoint
from jfb.workloads import WORKLOADS

ENTRIES = index()


def _eval(name: str, capsys, *flags: str) -> dict:
    assert main(["eval", name, "--json", "--no-progress", *flags]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_every_workload_and_the_default_mnist_recipe_ship_small_files():
    assert set(ENTRIES) == {"mnist-default", *WORKLOADS}
    for name, entry in ENTRIES.items():
        assert (pretrained_path(name) / "model.safetensors").stat().st_size < 3 * 2**20, name
        assert {"file", "metric", "value", "command", "cpu", "date"} <= entry.keys()
    assert pretrained_path("nope") is None


def test_every_shipped_model_is_safetensors_and_json_and_nothing_pickled():
    """The safetensors package reads every weight file itself; config.json says what they are and their SHA-256."""
    assert not [p.name for p in FOLDER.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".bin")]
    for name in ENTRIES:
        folder = pretrained_path(name)
        weights = load_file(folder / "model.safetensors")
        description = json.loads((folder / "config.json").read_text())
        assert description["format"] == "torch-jfb-pretrained/1"
        assert description["weights_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        assert ENTRIES[name]["metric"] in description["metrics"], name
        model, _ = from_pretrained(name)
        state = model.state_dict()
        assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in weights), name


def test_shipped_models_load_and_evaluate_without_torch_load(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    assert _eval("chains", capsys)["metrics"]["far_end_accuracy"] == pytest.approx(ENTRIES["chains"]["value"])
    assert main(["generate", "lm", "--prompt", "import ", "--max-bytes", "4", "--no-progress"]) == 0


def test_a_checkpoint_saved_as_safetensors_reloads_and_a_damaged_one_is_refused(tmp_path, capsys):
    trained = tmp_path / "run"
    WORKLOADS["chains"].run(WORKLOADS["chains"].config(steps=3), trained, progress=False)
    folder = tmp_path / "saved"
    assert main(["export", str(trained / "model.pt"), "--format", "safetensors", "--out", str(folder)]) == 0
    assert "weights_identical True" in capsys.readouterr().out
    original, saved = load_checkpoint(trained / "model.pt"), load_checkpoint(folder)
    assert saved["workload"] == "chains" and saved["config"] == original["config"]
    assert all(torch.equal(saved["model"][k], original["model"][k]) for k in original["model"])
    with (folder / "model.safetensors").open("r+b") as f:  # one byte of the weights changed
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(JfbError, match="checksum mismatch"):
        load_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(JfbError, match=r"not a saved model folder \(no config.json\)"):
        load_checkpoint(folder)
    assert main(["export", "chains", "--format", "safetensors", "--depth", "3"]) == 2
    assert "--depth: options of onnx and pt2 exports" in capsys.readouterr().err


#: shipped workloads whose evaluation takes seconds, not milliseconds (mazes: most of a minute, 100 mazes a size, up to
#: 960 iterations; prefix sums 12 s; sudoku, state tracking seconds): the full suite runs them, the fast loop not
SLOW_EVALUATIONS = {"mazes", "prefix-sums", "state-tracking", "sudoku"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_EVALUATIONS else n for n in sorted(WORKLOADS)]
)
def test_a_shipped_workload_reproduces_its_metric(name, capsys):
    entry = ENTRIES[name]
    result = _eval(name, capsys)
    assert result["workload"] == name
    same_text = result["metrics"].get("corpus_sha256") == result["saved_metrics"].get("corpus_sha256")
    # the language model's corpus is this interpreter's standard library: another Python version, other text
    tolerance = dict(rel=2e-3, abs=0.01) if same_text else dict(abs=0.3)
    assert result["metrics"][entry["metric"]] == pytest.approx(entry["value"], **tolerance)


@pytest.mark.slow
def test_the_shipped_mnist_recipe_reproduces_its_test_accuracy(capsys):
    entry = ENTRIES["mnist-default"]
    result = _eval("mnist-default", capsys)
    assert result["test_acc"] == pytest.approx(entry["value"], abs=0.05)  # bf16 evaluation on AMX CPUs: +-0.02


def test_options_of_image_checkpoints_are_refused_for_a_workload(capsys):
    assert main(["eval", "chains", "--max-iter", "3"]) == 2
    assert "holds a workload" in capsys.readouterr().err


def test_a_workloads_evaluation_settings_change_by_flag_and_its_rows_are_written(capsys, tmp_path):
    """``--set`` gives a test-time compute curve at other sizes and budgets; ``--out`` writes its rows."""
    flags = ["--set", "test_bits=16,40 test_depths=4,30 test_strings=25", "--out", str(tmp_path / "curve")]
    result = _eval("prefix-sums", capsys, *flags)
    assert result["changes"] == {"test_bits": [16, 40], "test_depths": [4, 30], "test_strings": 25}
    rows = (tmp_path / "curve" / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("bits,max_iter,accuracy") and len(rows) == 1 + 4
    by_budget = {tuple(line.split(",")[:2]): float(line.split(",")[2]) for line in rows[1:]}
    assert by_budget[("16", "30")] == 1.0 and by_budget[("40", "4")] < by_budget[("40", "30")]  # more iterations help
    assert set(result["metrics"]) == {"accuracy_16_bits", "accuracy_40_bits", "hardest_accuracy"}


@pytest.mark.parametrize(
    ("value", "message"),
    [("test_bitz=16", "did you mean 'test_bits'"), ("test_bits", "KEY=VALUE"), ("test_strings=many", "test_strings")],
)
def test_a_bad_evaluation_setting_is_refused_in_one_line(value, message, capsys):
    assert main(["eval", "prefix-sums", "--set", value]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
