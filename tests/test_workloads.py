"""The workloads beyond MNIST: their data, their models' constraints, and tiny trainings that must learn."""

from __future__ import annotations

import json
import math

import pytest
import torch

from jfb import get_backward
from jfb.cli.main import main
from jfb.errors import ConvergenceWarning, JfbError
from jfb.train.distributed import Processes
from jfb.train.engine import saved_tensor_bytes
from jfb.train.steps import StepRun, run_steps
from jfb.workloads import WORKLOADS, get_workload
from jfb.workloads.chains import ImplicitGraphBlock, chain_adjacency, chain_graph
from jfb.workloads.language import byte_batch, stdlib_corpus, text_corpus
from jfb.workloads.prefix_sums import prefix_sum_batch


def _train(name: str, **changes):
    workload = get_workload(name)
    trained = workload.train(workload.config(**changes))
    return trained.model, trained.result, trained.metrics, trained.rows


def test_prefix_sum_targets_are_running_parities():
    strings, targets = prefix_sum_batch(4, 9, seed=3)
    for row, target in zip(strings[:, 0].long(), targets):
        parity, expected = 0, []
        for bit in row.tolist():
            parity ^= bit
            expected.append(parity)
        assert target.tolist() == expected
    assert torch.equal(prefix_sum_batch(4, 9, seed=3)[0], strings)  # seeded


@pytest.mark.slow
def test_prefix_sums_trained_on_16_bits_solves_32_bits_given_more_iterations():
    """Easy to hard: 150 steps on 16-bit strings; at 32 bits the model needs more than its training depth."""
    _, result, metrics, rows = _train("prefix-sums", **get_workload("prefix-sums").smoke)
    accuracy = {r["max_iter"]: r["accuracy"] for r in rows}
    assert accuracy[64] >= 0.95  # measured 1.0 on seeds 0, 1, 2
    assert accuracy[16] <= 0.1  # 16 iterations carry information 32 positions at most: not enough
    assert metrics["hardest_accuracy"] == accuracy[64]
    assert result.forward_iterations == 16


def test_chain_adjacency_is_symmetric_normalised_with_spectral_radius_one():
    dense = chain_adjacency(3, 5).to_dense()
    assert torch.equal(dense, dense.T)
    assert dense[0, 1] == pytest.approx(1 / (2 * 3) ** 0.5)  # end node (degree 2 with its loop) to a middle one
    assert torch.linalg.eigvalsh(dense).abs().max() == pytest.approx(1.0, abs=1e-5)
    assert (dense[:5, 5:] == 0).all()  # the paths are disjoint


def test_chain_graph_puts_the_label_at_the_head_only():
    features, _, labels = chain_graph(chains=6, length=4, classes=3, seed=1)
    by_chain = features.view(6, 4, 3)
    assert (by_chain[:, 1:] == 0).all()
    assert torch.equal(by_chain[:, 0].argmax(1), labels.view(6, 4)[:, 0])
    assert (labels.view(6, 4) == labels.view(6, 4)[:, :1]).all()


def test_graph_block_weight_stays_in_the_infinity_norm_ball():
    block = ImplicitGraphBlock(8, kappa=0.9)
    with torch.no_grad():
        block.weight.mul_(50)
    assert block.constrained_weight().abs().sum(1).max().item() == pytest.approx(0.9)
    small = ImplicitGraphBlock(8, kappa=0.9)
    with torch.no_grad():
        small.weight.mul_(0.01)
    assert torch.equal(small.constrained_weight(), small.weight)


@pytest.mark.slow
def test_implicit_graph_network_reaches_the_far_end_where_a_shallow_gnn_cannot():
    smoke = get_workload("chains").smoke
    _, _, implicit, _ = _train("chains", **smoke)
    _, _, shallow, _ = _train("chains", **{**smoke, "engine": "unroll", "depth": 3})
    assert implicit["far_end_accuracy"] >= 0.95  # measured 1.0 on seeds 0, 1, 2
    assert shallow["far_end_accuracy"] <= 0.7  # 3 hops: chance (0.44-0.52 measured) at the far end


def test_stdlib_corpus_is_split_by_file_and_checksummed():
    a, b = stdlib_corpus(50_000), stdlib_corpus(50_000)
    assert a.sha256 == b.sha256 and a.files >= 20
    assert len(a.train) == len(a.valid) == 50_000
    assert not torch.equal(a.train[:1000], a.valid[:1000])
    tokens, targets = byte_batch(a.train, 3, 16, seed=0)
    assert torch.equal(tokens[:, 1:], targets[:, :-1]) and tokens.max() < 256


def test_text_corpus_refuses_a_tiny_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("too short")
    with pytest.raises(JfbError, match="at least 10000"):
        text_corpus(path, 1000)
    path.write_bytes(bytes(range(256)) * 100)
    corpus = text_corpus(path, 10**6)
    assert len(corpus.train) == 23040 and len(corpus.valid) == 2560


def test_deq_language_model_learns_bytes():
    _, result, metrics, _ = _train("lm", steps=60, width=32, heads=2, context=32, max_bytes=200_000, valid_windows=64)
    assert result.final_loss < 3.3  # nats; uniform over bytes is 5.55, measured 2.89-2.95 on seeds 0-2
    assert metrics["valid_bits_per_byte"] < 5.0  # measured 4.38-4.43
    assert len(metrics["corpus_sha256"]) == 64


def test_jfb_memory_does_not_grow_with_depth_and_unrolling_does():
    def saved(engine: str, depth: int) -> int:
        workload = get_workload("prefix-sums")
        config = workload.config(engine=engine, width=16, depth=depth)
        model = workload.model(config)
        bits, targets = prefix_sum_batch(8, 16, seed=0)
        with saved_tensor_bytes() as total:
            workload.loss(config)(model, (bits, targets))
        return total[0]

    assert saved("jfb", 40) == saved("jfb", 10)
    assert saved("unroll", 40) > 3.5 * saved("unroll", 10)


def test_jfb_train_routes_workloads_and_writes_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--steps", "3", "--width", "8", "--test-bits", "8", "--test-depths", "4", "--test-strings", "4"]
    assert main(["train", "prefix-sums", *flags, "--out", str(out), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["workload"] == "prefix-sums" and result["forward_iterations"] == 30
    assert {p.name for p in out.iterdir()} >= {"model.pt", "prefix-sums.csv", "prefix-sums.md"}


def test_unknown_engine_is_one_line(capsys):
    assert main(["train", "chains", "--engine", "nope", "--steps", "1", "--out", "/tmp/never"]) == 2
    assert "unknown engine 'nope'" in capsys.readouterr().err


def test_any_backward_mode_by_name_is_an_engine():
    """``--engine ift:gmres:...`` trains with that mode (its gradient is ift's to the tolerance); ``shine`` brings
    the Broyden forward solve it needs; a name that is neither an engine nor a mode is one line naming both."""
    from jfb.workloads.engines import jfb_engine

    workload = get_workload("prefix-sums")
    config = workload.config(width=8, train_bits=8, depth=30)
    grads = {}
    for engine in ("ift:tol=1e-10:max_iter=200", "ift:gmres:tol=1e-10:max_iter=200"):
        torch.manual_seed(0)
        model = workload.model(config, jfb_engine(engine))
        loss, _ = workload.loss(config)(model, prefix_sum_batch(8, 8, seed=0))
        loss.backward()
        grads[engine] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert repr(model.engine.layer.backward).startswith(engine.split(":tol")[0])
    a, b = grads.values()
    assert float((a - b).norm() / b.norm()) < 1e-6
    model = workload.model(config, jfb_engine("shine:refine=5"))
    assert model.engine.layer.options.solver == "broyden"
    with pytest.raises(JfbError, match=r"engine 'ift:nope'.*unknown IFT linear solver 'nope'"):
        jfb_engine("ift:nope")  # a known mode with a bad option names the option
    with pytest.raises(JfbError, match=r"unknown engine 'nope:3'.*a backward mode by name"):
        jfb_engine("nope:3")


def test_every_workload_is_registered_with_its_metric():
    for name, workload in WORKLOADS.items():
        assert workload.name == name
        assert workload.metric


def test_missed_backward_solves_are_counted_and_warned_once():
    """IFT with a 1-iteration linear solve cannot meet its tolerance: every step misses, one warning says so."""
    workload = get_workload("prefix-sums")
    config = workload.config(width=8, train_bits=8, depth=4, steps=3, test_bits=(8,), test_depths=(4,))
    model = workload.model(config)
    model.engine.layer.backward_mode = get_backward("ift:max_iter=1")
    with pytest.warns(ConvergenceWarning, match="missed its tolerance in 3 of 3 steps"):
        result, _ = run_steps(workload.training(model, config), StepRun(None, "prefix-sums", {}, Processes()))
    assert result.backward_misses == 3


def _fake_wikitext(folder, name: str = "wikitext-2-v1.zip"):
    import zipfile

    path = folder / name
    with zipfile.ZipFile(path, "w") as archive:
        for split, text in (("train", " = Valkyria = \n" * 2000), ("valid", " = Tower = \n" * 1000)):
            archive.writestr(f"wikitext-2/wiki.{split}.tokens", text)
    return path


def test_wikitext_loader_checks_the_archive_and_reads_its_splits(tmp_path):
    from jfb.data.checksum import ChecksumError, md5sum
    from jfb.data.wikitext import read_wikitext

    path = _fake_wikitext(tmp_path)
    with pytest.raises(ChecksumError, match="MD5 checksum mismatch"):  # not the published archive
        read_wikitext(path, "train", 100)
    assert read_wikitext(path, "valid", 12, md5=md5sum(path)) == b" = Tower = \n"
    assert len(read_wikitext(path, "train", 10**6, md5=md5sum(path))) == 15 * 2000
    with pytest.raises(JfbError, match="not a WikiText archive"):
        read_wikitext(tmp_path / "other.zip", "train", 10)


def _easy_to_hard_folder(root, lengths=(16, 32), strings=300):
    for bits in lengths:
        folder = root / "prefix_sums_data" / f"len_{bits}"
        folder.mkdir(parents=True)
        data = (torch.rand(strings, bits, generator=torch.Generator().manual_seed(bits)) >= 0.5).float()
        torch.save(data, folder / f"{bits}_data.pth")
        torch.save(data.cumsum(1) % 2, folder / f"{bits}_targets.pth")
    return root


@pytest.mark.slow
def test_prefix_sums_train_and_test_on_the_easy_to_hard_files(tmp_path):
    from jfb.data.easy_to_hard import prefix_sums_files, read_prefix_sums

    root = _easy_to_hard_folder(tmp_path)
    strings, targets = read_prefix_sums(root, 16)
    assert strings.shape == (300, 1, 16) and torch.equal(targets, strings[:, 0].long().cumsum(1) % 2)
    smoke = {**get_workload("prefix-sums").smoke, "data": str(root), "test_strings": 100}
    _, _, metrics, _ = _train("prefix-sums", **smoke)
    assert metrics["hardest_accuracy"] >= 0.9  # trained on 200 of the 300 16-bit strings, tested on 32 bits
    damaged = prefix_sums_files(root, 32)[1]
    torch.save(torch.zeros(300, 32), damaged)
    with pytest.raises(JfbError, match="not the prefix parities"):
        read_prefix_sums(root, 32)
    with pytest.raises(JfbError, match="no such file"):
        read_prefix_sums(root, 64)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["jfb", "ift", "unroll"])
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_workload_trains_under_every_engine_on_one_process(name, engine):
    """The one-process cells of the documented matrix (the torchrun cells: test_parallel_workloads.py)."""
    workload = get_workload(name)
    config = workload.config(**{**workload.smoke, "steps": 3, "engine": engine})
    trained = workload.train(config, log=lambda _: None)
    assert len(trained.result.losses) == 3 and all(math.isfinite(loss) for loss in trained.result.losses)
    assert workload.metric in trained.metrics and trained.model is not None
