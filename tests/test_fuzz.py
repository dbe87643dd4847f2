"""Fuzzed inputs at every door (hypothesis; example counts bounded so CI stays within its time).

Configuration (TOML files and flag values), and checkpoint files: each input is either accepted or refused in
one line (exit status 2 for the command line) before a run directory is touched; never a traceback, never code
from a file, and memory bounded by the file's size.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jfb
import jfb.cli.commands as commands
from jfb.cli.main import build_parser, main
from jfb.cli.train_settings import TrainSettings
from jfb.errors import JfbError
from jfb.safe_load import load_tensors_only
from jfb.solvers.options import option_names
from jfb.train import TrainConfig, load_checkpoint

CHECKPOINT = Path(__file__).resolve().parent / "fixtures" / "checkpoints" / "torch-jfb-3" / "last.pt"
FIELDS = [f for f in TrainConfig.__dataclass_fields__ if f not in ("solve", "eval_solve")]
#: examples per door in CI; JFB_FUZZ_EXAMPLES=N runs N (a longer local hunt)
EXAMPLES = int(os.environ.get("JFB_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
    st.sampled_from(["", "none", "nan", "mnist", "picard", "jfb", "ift:cg:tol=x", "auto:every=0", "SIGKILL"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))
solve_tables = st.dictionaries(st.sampled_from([*option_names(), "max_iters", ""]), values, max_size=4)
configs = st.dictionaries(
    st.sampled_from([*FIELDS, "solve", "eval_solve", "fixed_depth", "max_iters", "", "Ω"]),
    st.one_of(values, solve_tables),
    max_size=5,
)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # ints, finite floats, strings (JSON escapes are TOML's)


def _toml(config: dict) -> str:
    top = [
        f"{json.dumps(k, ensure_ascii=False)} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)
    ]
    tables = [
        f"[{json.dumps(k, ensure_ascii=False)}]\n"
        + "\n".join(f"{json.dumps(key, ensure_ascii=False)} = {_toml_value(v)}" for key, v in table.items())
        for k, table in config.items()
        if isinstance(table, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


@pytest.fixture
def no_training(monkeypatch):
    """``jfb train`` with everything but the training itself: the configurations it would train."""
    trained = []
    monkeypatch.setattr(commands, "train", lambda config, run_dir, **kwargs: trained.append(config) or {})
    return trained


def _refused_in_one_line(argv: list[str], capsys, run_dir: Path) -> None:
    try:
        code = main(argv)
    except SystemExit as done:  # argparse: a value of the wrong type
        code = done.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("jfb train: error: "), (argv, err)
    assert not run_dir.exists()


@FUZZ
@given(config=configs)
@pytest.mark.slow
def test_fuzzed_toml_files_are_accepted_or_refused_in_one_line(tmp_path, capsys, no_training, config):
    path = tmp_path / "fuzzed.toml"
    path.write_text(_toml(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # 0.1's flat keys are read with a warning
        try:
            TrainSettings(str(path)).config({})
        except JfbError:
            _refused_in_one_line(["train", str(path), "--out", str(tmp_path / "run")], capsys, tmp_path / "run")


def _train_flags() -> list[str]:
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    return sorted(s for a in train._actions for s in a.option_strings if s.startswith("--") and a.nargs != 0)


@FUZZ
@given(flag=st.sampled_from(_train_flags()), value=st.one_of(scalars.map(str), st.sampled_from(["-1", "1e309"])))
@pytest.mark.slow
def test_fuzzed_flag_values_are_accepted_or_refused_in_one_line(tmp_path, capsys, no_training, flag, value):
    argv = ["train", "mnist", flag, value, "--out", str(tmp_path / "run")]
    try:
        code = main(argv)
    except SystemExit as done:
        code = done.code
    err = capsys.readouterr().err.strip().splitlines()
    if code == 0:
        assert len(no_training) == 1 and isinstance(no_training.pop(), TrainConfig)
    else:
        assert code == 2 and len(err) == 1 and err[0].startswith("jfb train: error: "), (argv, err)
    assert not (tmp_path / "run").exists()


def _mutated(original: bytes, path: Path, seed: int, flips: int, cut: bool) -> Path:
    """``original`` cut at a random offset (with ``cut``) and ``flips`` random bits flipped, written to ``path``."""
    data, rng = bytearray(original), random.Random(seed)
    if cut:
        data = data[: rng.randrange(len(data))]
    for _ in range(flips if data else 0):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return path


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 4), cut=st.booleans())
def test_flipped_or_truncated_checkpoints_are_refused_in_one_line_or_load_unchanged(tmp_path, seed, flips, cut):
    """Every format-3 file carries the SHA-256 of its payload: a change anywhere is refused, or (in the zip's
    framing) harmless, never a silently different model."""
    path = _mutated(CHECKPOINT.read_bytes(), tmp_path / "mutated.pt", seed, flips, cut)
    try:
        loaded = load_checkpoint(path)
    except JfbError as error:
        assert "\n" not in str(error) and str(path) in str(error)
        return
    original = load_checkpoint(CHECKPOINT)
    assert all(loaded["model"][k].equal(original["model"][k]) for k in original["model"])


#: created if unpickling ever ran code from a file (it must not)
CODE_RAN = Path(tempfile.gettempdir()) / f"jfb-fuzz-code-ran-{os.getpid()}"


class _Marker:
    """Unpickled with code execution, this would create CODE_RAN."""

    def __reduce__(self):
        return (Path.touch, (CODE_RAN,))


@pytest.mark.parametrize("member", ["missing", "extra", "code"])
def test_zip_members_missing_extra_or_naming_code_are_handled_without_running_it(tmp_path, member):
    import io
    import pickle

    import torch

    buffer = io.BytesIO()
    torch.save({"format": "torch-jfb/1", "model": {"w": torch.ones(3)}}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    path = tmp_path / f"{member}.pt"
    with zipfile.ZipFile(path, "w") as out:
        for name in source.namelist():
            data = source.read(name)
            if member == "missing" and name.endswith("data/0"):
                continue
            if member == "code" and name.endswith("data.pkl"):
                data = pickle.dumps({"format": "torch-jfb/1", "model": _Marker()}, protocol=2)
            out.writestr(name, data)
        if member == "extra":
            out.writestr("archive/data/99", b"unreferenced")
    if member == "extra":  # an unreferenced member is never read: the file loads as it was written
        assert load_checkpoint(path)["model"]["w"].equal(torch.ones(3))
        return
    with pytest.raises(JfbError) as refused:
        load_checkpoint(path)
    assert "\n" not in str(refused.value) and not CODE_RAN.exists()


@pytest.mark.slow
def test_memory_stays_bounded_over_many_fuzzed_files(tmp_path):
    """Peak RSS growth of one process loading 200 flipped or truncated copies of a 0.7 MB checkpoint."""
    script = (
        "import random, resource, sys\n"
        "from pathlib import Path\n"
        "from jfb.train import load_checkpoint\n"
        "data, rng, path = Path(sys.argv[1]).read_bytes(), random.Random(0), Path(sys.argv[2])\n"
        "load_checkpoint(sys.argv[1])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for _ in range(200):\n"
        "    mutated = bytearray(data[: rng.randrange(1, len(data) + 1)])\n"
        "    mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)\n"
        "    path.write_bytes(bytes(mutated))\n"
        "    try:\n        load_checkpoint(path)\n    except ValueError:\n        pass\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    )
    argv = [sys.executable, "-c", script, str(CHECKPOINT), str(tmp_path / "m.pt")]
    growth_mib = float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert growth_mib < 16  # measured: 3.6 MiB (all 200 refused)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex64]


def _tensor(shape: tuple[int, ...], dtype: torch.dtype, layout: str, poison: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g).to(dtype)
    if layout == "transposed" and t.dim() >= 2:
        t = t.transpose(0, -1).contiguous().transpose(0, -1)  # same shape, non-contiguous strides
    elif layout == "channels_last" and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    if poison != "none" and t.is_floating_point() and t.numel():
        t[(0,) * t.dim()] = float(poison)
    return t


def _operator(kind: str, fail_at: int):
    calls = {"n": 0}

    def T(u, x):
        calls["n"] += 1
        if kind == "raises" and calls["n"] == fail_at:
            raise ValueError("the user's operator failed")
        if kind == "tuple":
            return (u, u)
        if kind == "nan_at" and calls["n"] >= fail_at:
            return torch.full_like(u, float("nan"))
        return torch.tanh(0.5 * u + x)

    return T


shapes = st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple)


@FUZZ
@given(
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["contiguous", "transposed", "channels_last"]),
    poison=st.sampled_from(["none", "none", "nan", "inf"]),
    u0=st.sampled_from(["none", "like", "wrong_shape", "wrong_dtype", "tuple", "nan"]),
    kind=st.sampled_from(["good", "good", "raises", "tuple", "nan_at"]),
    fail_at=st.integers(1, 5),
    backward=st.sampled_from(["jfb", "ift", "neumann:2", "unroll"]),
    seed=st.integers(0, 1000),
)
def test_fuzzed_layer_calls_give_a_status_or_a_jfb_error(
    shape, dtype, layout, poison, u0, kind, fail_at, backward, seed
):
    """Bad shapes, dtypes, layouts, NaN, batch sizes 0 and 1, operators that raise or return NaN or the wrong
    structure: a status in the result, a JfbError naming the argument, or the operator's own error (raised after
    its first call) passed on with a note of where it happened; a converged result is a fixed point."""
    x = _tensor(shape, dtype, layout, poison, seed)
    initial = {
        "none": None,
        "like": lambda x: torch.zeros_like(x),
        "wrong_shape": torch.zeros(max(shape[0], 1), 7),
        "wrong_dtype": torch.zeros(shape, dtype=torch.int64),
        "tuple": (torch.zeros(shape), torch.zeros(shape)),
        "nan": torch.full(shape, float("nan")),
    }[u0]
    solver = "picard" if backward == "unroll" else "anderson"
    try:
        result = jfb.fixed_point(
            _operator(kind, fail_at),
            x,
            u0=initial,
            backward=backward,
            solver=solver,
            tol=1e-6,
            max_iter=20,
            on_failure="ignore",
        )
    except JfbError as error:
        assert "\n" not in str(error).strip()
        return
    except ValueError as error:  # the operator's own, raised mid-solve
        assert kind == "raises" and str(error) == "the user's operator failed"
        assert any(note.startswith("jfb: raised by the operator") for note in error.__notes__)
        return
    stats = result.stats
    assert stats.status in set(jfb.Status)
    if stats.status == jfb.Status.CONVERGED and result.fixed_point.numel():  # never silently wrong
        u = result.fixed_point.double()
        residual = (torch.tanh(0.5 * u + x.double()) - u).reshape(u.shape[0], -1).norm(dim=1)
        exact = x.dtype in (torch.float32, torch.float64)  # a float16/bfloat16 state converges to its precision
        assert float(residual.max()) <= (1e-5 if exact else 0.05), float(residual.max())


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 4), cut=st.booleans())
def test_flipped_or_truncated_reference_files_are_refused_in_one_line_or_load(tmp_path, seed, flips, cut):
    """The authors' files carry no checksum: a flip in tensor bytes loads (the fingerprint tests of
    tests/test_reference.py catch that); anywhere else it is refused in one line. Never another exception,
    never code: the allow-list unpickler turns unknown classes into inert records."""
    path = _mutated(_reference_like(), tmp_path / "reference.pth", seed, flips, cut)
    try:
        loaded = load_tensors_only(path)
    except JfbError as error:
        assert "\n" not in str(error) and str(path) in str(error)
        return
    assert isinstance(loaded, dict) and not CODE_RAN.exists()


def _reference_like() -> bytes:
    """A small file shaped like the authors' checkpoints: weights next to a pickled optimiser object."""
    import io
    from collections import Counter, OrderedDict

    buffer = io.BytesIO()
    state = OrderedDict(w=torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), b=torch.zeros(4))
    torch.save({"net_state_dict": state, "optimizer": Counter(steps=3), "epoch": 3}, buffer)  # a class to keep inert
    return buffer.getvalue()


def test_a_reference_file_naming_a_function_to_call_is_refused_without_calling_it(tmp_path):
    import io

    buffer = io.BytesIO()
    torch.save({"net_state_dict": {"w": torch.ones(2)}, "optimizer": _Marker()}, buffer)
    path = tmp_path / "hostile.pth"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(JfbError, match="cannot read checkpoint"):
        load_tensors_only(path)
    assert not CODE_RAN.exists()


def test_an_output_whose_batch_broadcast_away_is_refused() -> None:
    """Found by the fuzzer (x with 0 samples, u0 with 1): T's output broadcast to 0 rows used to raise torch's
    reshape error from inside the layer."""
    with pytest.raises(jfb.JfbError, match=r"T\(u0\) has shape \(0, 7\) but u0 has \(1, 7\)"):
        jfb.fixed_point(lambda u, x: torch.tanh(0.5 * u + x), torch.zeros(0, 1), u0=torch.zeros(1, 7))
