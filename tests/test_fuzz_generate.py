"""The new doors of issue 36, fuzzed: ``generate`` with any prompts and options gives a well-formed generation (the
cached one equal to re-solving while it fits the context) or a JfbError in one line; a saved model folder whose
weights or config.json are damaged, truncated or declare huge shapes is refused in one line (``jfb eval`` exits 2)
within bounded memory, never with a traceback."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jfb.cli.main import main
from jfb.decoding import generate
from jfb.errors import JfbError
from jfb.pretrained import pretrained_path
from jfb.train.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint
from jfb.workloads.engines import jfb_engine
from jfb.workloads.language import DeqLanguageModel

EXAMPLES = int(os.environ.get("JFB_FUZZ_EXAMPLES", "30"))
pytestmark = pytest.mark.slow


def _model() -> DeqLanguageModel:
    torch.manual_seed(0)
    model = DeqLanguageModel(16, 2, 16, jfb_engine("jfb")).double().eval()
    with torch.no_grad():
        model.head.weight.mul_(8.0)
    return model


MODEL = _model()


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    prompts=st.lists(st.binary(min_size=0, max_size=24), min_size=1, max_size=3),
    new=st.integers(0, 6),
    do_sample=st.booleans(),
    temperature=st.sampled_from([1.0, 0.5, 2.0, 0.0, -1.0]),
    top_k=st.sampled_from([0, 1, 5, 300, -2]),
    top_p=st.sampled_from([1.0, 0.9, 1e-9, 0.0, 1.5]),
    max_iter=st.sampled_from([0, 1, 200]),
    warm_start=st.booleans(),
    seed=st.integers(0, 5),
)
def test_generate_gives_a_well_formed_generation_or_one_line(
    prompts, new, do_sample, temperature, top_k, top_p, max_iter, warm_start, seed
):
    options = dict(
        max_new_tokens=new,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_iter=max_iter,
        tol=1e-11,
        warm_start=warm_start,
        seed=seed,
    )
    try:
        out = generate(MODEL, prompts, **options)
    except JfbError as error:
        assert "\n" not in str(error)
        return
    assert out.tokens.shape == out.iterations.shape == out.converged.shape == (len(prompts), new)
    assert out.tokens.min() >= 0 and out.tokens.max() < 256
    assert (out.iterations >= 1).all() and (out.iterations <= max_iter).all()
    assert out.cropped_prompts == sum(len(p) > MODEL.context for p in prompts)
    if not do_sample and max_iter == 200 and all(len(p) + new <= MODEL.context for p in prompts):
        again = generate(MODEL, prompts, **{**options, "cache": False})
        assert torch.equal(out.tokens, again.tokens)
    if do_sample:  # seeded: the same draws again
        assert torch.equal(generate(MODEL, prompts, **options).tokens, out.tokens)


def _saved(tmp_path, weights: bytes, description: dict | None = None):
    """A copy of the shipped chains folder with ``weights`` as its safetensors file and a config.json whose
    checksum matches them (so the parser, not the checksum, meets the damage)."""
    import hashlib

    folder = tmp_path / "saved"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(pretrained_path("chains"), folder)
    (folder / WEIGHTS_FILE).write_bytes(weights)
    config = description or json.loads((folder / CONFIG_FILE).read_text())
    config["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return folder


def _refused_in_one_line(folder, capsys) -> None:
    tracemalloc.start()
    try:
        code = main(["eval", str(folder), "--no-progress"])
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    err = capsys.readouterr().err.strip()
    assert peak < 64 * 2**20, peak  # a declared size is never allocated before it is checked
    if code == 0:
        return
    assert code == 2 and err.startswith("jfb eval: error:") and "\n" not in err, err


ORIGINAL = (pretrained_path("chains") / WEIGHTS_FILE).read_bytes()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    damage=st.sampled_from(["truncate", "flip", "header"]),
    where=st.floats(0, 1, exclude_max=True),
    byte=st.integers(1, 255),
    shape=st.lists(st.integers(0, 2**40), min_size=0, max_size=4),
)
def test_a_damaged_weights_file_is_refused_in_one_line(tmp_path, capsys, damage, where, byte, shape):
    at = int(where * len(ORIGINAL))
    if damage == "truncate":
        weights = ORIGINAL[:at]
    elif damage == "flip":
        weights = ORIGINAL[:at] + bytes([ORIGINAL[at] ^ byte]) + ORIGINAL[at + 1 :]
    else:  # a header that declares a huge tensor
        header = json.dumps({"huge": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4 * 2**40]}}).encode()
        weights = struct.pack("<Q", len(header)) + header + b"\0" * 64
    _refused_in_one_line(_saved(tmp_path, weights), capsys)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["workload", "config", "metrics", "format", "weights_sha256"]), value=JSON)
def test_a_damaged_config_json_is_refused_in_one_line(tmp_path, capsys, key, value):
    description = json.loads((pretrained_path("chains") / CONFIG_FILE).read_text())
    folder = _saved(tmp_path, ORIGINAL, {**description})
    written = json.loads((folder / CONFIG_FILE).read_text())
    written[key] = value
    (folder / CONFIG_FILE).write_text(json.dumps(written))
    _refused_in_one_line(folder, capsys)


def test_weights_of_another_model_are_refused_in_one_line(tmp_path, capsys):
    lm = (pretrained_path("lm") / WEIGHTS_FILE).read_bytes()
    folder = _saved(tmp_path, lm)
    assert main(["eval", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "do not fit the model" in err and err.count("\n") == 1
    with pytest.raises(JfbError, match="checksum mismatch"):
        (folder / WEIGHTS_FILE).write_bytes(ORIGINAL)
        load_checkpoint(folder)
