"""The weights shipped with the package: each evaluates, by name, to the metric it reported when trained."""

from __future__ import annotations

import json

import pytest

from jfb.cli.main import main
from jfb.pretrained import index, pretrained_path
from jfb.workloads import WORKLOADS

ENTRIES = index()


def _eval(name: str, capsys, *flags: str) -> dict:
    assert main(["eval", name, "--json", "--no-progress", *flags]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_every_workload_and_the_default_mnist_recipe_ship_small_files():
    assert set(ENTRIES) == {"mnist-default", *WORKLOADS}
    for name, entry in ENTRIES.items():
        assert pretrained_path(name).stat().st_size < 3 * 2**20, name
        assert {"file", "metric", "value", "command", "cpu", "date"} <= entry.keys()
    assert pretrained_path("nope") is None


@pytest.mark.parametrize("name", sorted(WORKLOADS))
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
