"""The examples in examples/ at tiny budgets: each must beat its trivial baseline by a clear margin."""

from __future__ import annotations

from pathlib import Path

import pytest
from modules import from_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.slow


def _example(name: str):
    return from_file(EXAMPLES / f"{name}.py")


def test_the_mlp_deq_learns_mnist_with_a_latent_unlike_its_input():
    result = _example("mlp_mnist").main(["--epochs", "1", "--limit-train", "5000", "--hidden", "64"])
    assert result["parameters"] == 784 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert result["test_acc"] >= 75.0  # chance: 10%; measured 83.9%


def test_on_the_adding_problem_only_gradients_through_time_learn_the_memory():
    results = _example("adding_problem").main(["--steps", "200", "--length", "10", "--backward", "jfb,ift"])
    mse = {r["backward"]: r["test_mse"] for r in results}
    # predicting the mean gives 1/6; JFB's gradient never reaches the earlier steps (measured: jfb 0.10, ift 0.037)
    assert mse["jfb"] > 0.08
    assert mse["ift"] < 0.5 * mse["jfb"]


def test_the_deq_prior_deblurs_better_than_the_blurred_input():
    result = _example("deblurring").main(
        ["--epochs", "1", "--limit-train", "1000", "--limit-test", "200", "--depth", "5", "--channels", "16"]
    )
    assert result["deq_parameters"] == result["plain_cnn_parameters"] + 1  # + the step size eta
    assert result["deq_psnr"] > result["blurred_psnr"] + 2.0
    assert result["plain_cnn_psnr"] > result["blurred_psnr"]


def test_the_autopilot_escalates_when_contraction_is_lost_and_returns_to_jfb():
    log = _example("autopilot").main([])
    switches = [(entry["step"], entry["switched_to"]) for entry in log if entry["switched_to"]]
    assert switches == [(110, "neumann:4"), (150, "ift:gmres"), (210, "neumann:4"), (230, "jfb")]
    assert all(entry["mode"] == "jfb" and entry["cosine"] > 0.8 for entry in log if entry["step"] < 100)
