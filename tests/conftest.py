"""Process-wide torch settings a test may change (``TrainConfig(threads=1)`` calls torch.set_num_threads) are
restored after it, so a test's numbers do not depend on which tests ran before it."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64_default():
    """torch's default dtype float64 for the test (closed forms compared to 1e-8 and below), then restored."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
