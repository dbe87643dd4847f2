"""Paper models: parameter counts, shapes, explicit twins."""

from __future__ import annotations

import re

import pytest
import torch

from jfb.models import ARCHITECTURES, ExplicitClassifier, build_model, count_parameters

PAPER_COUNTS = {"mnist": 54_000, "svhn": 164_000, "cifar10": 840_000}


@pytest.mark.parametrize("arch, paper", PAPER_COUNTS.items())
def test_parameter_counts_within_two_percent_of_the_paper(arch, paper):
    count = count_parameters(build_model(arch))
    print(f"{arch}: {count:,} parameters (paper {paper:,})")
    assert abs(count - paper) / paper <= 0.02


def test_exact_counts():
    assert count_parameters(build_model("mnist")) == 54_352 <= 54_500
    assert count_parameters(build_model("mnist-reference")) == 35_856  # the authors' published MNIST model
    assert count_parameters(build_model("svhn")) == count_parameters(build_model("svhn-reference")) == 163_488
    assert count_parameters(build_model("cifar10-reference")) == 163_488


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_implicit_and_explicit_twins_share_layers_and_shapes(arch):
    a = ARCHITECTURES[arch]
    side = 28 if a.in_channels == 1 else 32
    d = torch.randn(3, a.in_channels, side, side)
    implicit, explicit = build_model(arch), build_model(arch, kind="explicit", explicit_depth=2)
    assert isinstance(explicit, ExplicitClassifier)
    assert count_parameters(implicit) == count_parameters(explicit)
    assert implicit(d).shape == explicit(d).shape == (3, 10)


def test_unknown_names_list_the_choices():
    with pytest.raises(
        ValueError, match="unknown architecture 'mlp'; choose one of mnist, svhn, cifar10, mnist-reference"
    ):
        build_model("mlp")
    with pytest.raises(ValueError, match="unknown model kind 'hybrid'; choose one of implicit, explicit"):
        build_model("mnist", kind="hybrid")


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_wrong_input_shapes_are_value_errors(kind):
    model = build_model("mnist", kind=kind)
    for bad, shape in (
        (torch.randn(2, 3, 28, 28), "(2, 3, 28, 28)"),
        (torch.randn(1, 28, 28), "(1, 28, 28)"),
        (torch.randn(0, 1, 28, 28), "(0, 1, 28, 28)"),
    ):
        with pytest.raises(
            ValueError, match=re.escape(f"expected input of shape (N, 1, 28, 28) with N >= 1, got {shape}")
        ):
            model(bad)
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
