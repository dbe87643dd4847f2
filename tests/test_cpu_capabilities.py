"""The tests that compare with stored numbers (checkpoint fixtures, the published weights, the authors'
checkpoints, the results pages, the models' and gradients' references) pass on every CPU kind: here they run
again with torch's CPU kernels forced lower (``ATEN_CPU_CAPABILITY=avx2``, as on an AMD EPYC without AVX-512, and
``default``, no vector kernels), the class of failure a fixture written on one CPU kind and compared bit for bit
on another would show."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STORED_NUMBERS = ["test_formats.py", "test_pretrained.py", "test_reference.py", "test_results_pages.py"]
STORED_NUMBERS += ["test_models.py", "test_gradients.py"]


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_the_tests_of_stored_numbers_pass_at_a_lower_cpu_capability(capability):
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    forced = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert forced.stdout.strip() == capability.upper()  # torch took it (it cannot raise one above the CPU's)
    files = [str(ROOT / "tests" / name) for name in STORED_NUMBERS]
    command = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *files]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
