"""Import of the paper authors' published checkpoints (files in ../shared/reference when present)."""
from __future__ import annotations

from pathlib import Path

import pytest

from jfb.cli.main import main
from jfb.models import build_model
from jfb.models.reference import load_reference
from jfb.train import load_checkpoint

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
FILES = {
    "MNIST_FPN_weights_99.36.pth": ("mnist-reference", 99.36),
    "SVHN_FPN_weights_94.12.pth": ("svhn", 94.12),
    "CIFAR10_FPN_Unaugmented_weights_80.45.pth": ("cifar10-small", 80.45),
}
needs_files = pytest.mark.skipif(not REFERENCE_DIR.is_dir(), reason="published checkpoints not present")


@needs_files
@pytest.mark.parametrize("name", FILES)
def test_conversion_is_strict_and_loads_into_our_model(name):
    arch, state, info = load_reference(REFERENCE_DIR / name)
    assert arch == FILES[name][0]
    assert round(info["reported_test_accuracy"], 2) == FILES[name][1]
    build_model(arch).load_state_dict(state, strict=True)


@needs_files
def test_import_reference_command_writes_our_checkpoint(tmp_path, capsys):
    out = tmp_path / "mnist_ref.pt"
    assert main(["import-reference", str(REFERENCE_DIR / "MNIST_FPN_weights_99.36.pth"), "--out", str(out)]) == 0
    checkpoint = load_checkpoint(out)
    assert checkpoint["config"]["arch"] == "mnist-reference" and checkpoint["config"]["dataset"] == "mnist"
