"""Faults of long and multi-process runs: preemption signals, a worker killed or hung under torchrun,
a truncated or corrupted checkpoint, a full disk, and batches poisoned with NaN."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from processes import (
    JFB,
    TORCHRUN,
    finish,
    kill_all,
    same_metrics,
    same_weights,
    start,
    succeed,
    wait_for_checkpoint,
    workers_of,
)
from training import config_of

import jfb.train.classifier as loop
from jfb import StorageError
from jfb.cli.main import main
from jfb.errors import JfbError
from jfb.train import load_checkpoint, save_checkpoint, train
from jfb.train.checkpoint import FORMAT, load_resumable, previous_path, unreadable_path
from jfb.train.preemption import EXIT_PREEMPTED

pytestmark = pytest.mark.slow

# 2,400 images in batches of 100: 24 steps per epoch, a mid-epoch checkpoint every 2 steps
TRAIN = [
    "train",
    "mnist",
    "--epochs",
    "2",
    "--limit-train",
    "2400",
    "--limit-test",
    "200",
    "--batch-size",
    "100",
    "--checkpoint-every",
    "2",
    "--deterministic",
    "--threads",
    "1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs: one process, and two under torchrun."""
    base = tmp_path_factory.mktemp("reference")
    succeed([*JFB, *TRAIN, "--out", str(base / "single")])
    succeed([*TORCHRUN, "-m", "jfb", *TRAIN, "--out", str(base / "ddp")])
    return base


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_preemption_signal_writes_last_and_exits_75_and_resume_is_bit_identical(tmp_path, reference, name):
    run_dir = tmp_path / "run"
    process = start([*JFB, *TRAIN, "--out", str(run_dir)])
    wait_for_checkpoint(process, run_dir / "last.pt", min_step=2)
    process.send_signal(getattr(signal, name))
    code, stdout, stderr = finish(process, timeout=60)
    assert code == EXIT_PREEMPTED, stderr[-3000:]
    assert stdout.count(f"preempted by {name}") == 1 and "--resume" in stdout
    position = load_checkpoint(run_dir / "last.pt")["position"]
    assert position["epoch"] == 0 and 2 <= position["step"] < 24  # stopped mid-epoch, at a finished step
    resumed = succeed([*JFB, *TRAIN, "--out", str(run_dir), "--resume"])
    assert f"at epoch 1, step {position['step']}" in resumed  # continued from the step written, not restarted
    assert same_weights(run_dir / "last.pt", reference / "single" / "last.pt")


def test_sigterm_to_torchrun_reaches_every_worker_and_rank_0_writes_once(tmp_path, reference):
    run_dir = tmp_path / "run"
    launcher = start([*TORCHRUN, "-m", "jfb", *TRAIN, "--out", str(run_dir)])
    wait_for_checkpoint(launcher, run_dir / "last.pt", min_step=2)
    launcher.send_signal(signal.SIGTERM)
    code, stdout, stderr = finish(launcher, timeout=90)
    assert code != 0  # torchrun itself reports the signal it got
    assert stdout.count("preempted by SIGTERM") == 1, stdout[-2000:] + stderr[-3000:]
    position = load_checkpoint(run_dir / "last.pt")["position"]
    assert position["epoch"] == 0 and position["step"] >= 2
    resumed = succeed([*TORCHRUN, "-m", "jfb", *TRAIN, "--out", str(run_dir), "--resume"])
    assert f"at epoch 1, step {position['step']}" in resumed  # continued from the step written, not restarted
    assert same_weights(run_dir / "last.pt", reference / "ddp" / "last.pt")
    assert same_metrics(run_dir, reference / "ddp")  # each process continued its own running sums


def test_torchrun_restarts_a_group_whose_worker_was_killed_and_finishes_identically(tmp_path, reference):
    run_dir = tmp_path / "run"
    launcher = start([*TORCHRUN, "--max-restarts", "2", "-m", "jfb", *TRAIN, "--out", str(run_dir), "--resume"])
    wait_for_checkpoint(launcher, run_dir / "last.pt", min_step=2)
    workers = workers_of(launcher.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    code, stdout, stderr = finish(launcher, timeout=300)
    assert code == 0, stderr[-3000:]
    assert "resumed from" in stdout and "connectFullMesh" not in stderr
    assert same_weights(run_dir / "last.pt", reference / "ddp" / "last.pt") and same_metrics(run_dir, reference / "ddp")


def test_a_hung_worker_makes_the_others_fail_within_the_timeout(tmp_path):
    run_dir = tmp_path / "run"
    launcher = start([*TORCHRUN, "-m", "jfb", *TRAIN, "--dist-timeout-s", "3", "--out", str(run_dir)])
    wait_for_checkpoint(launcher, run_dir / "last.pt", min_step=2)
    workers = workers_of(launcher.pid)
    os.kill(workers[-1], signal.SIGSTOP)  # alive but silent: the other waits for it in a collective
    try:
        code, _, stderr = finish(launcher, timeout=120)  # 3 s, then torchrun's 30 s grace before SIGKILL
    finally:
        kill_all(launcher)
    assert code != 0 and "Timed out waiting 3000ms" in stderr, (code, stderr[-3000:])  # the tail says which failure


def test_a_truncated_last_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    run_dir = tmp_path / "run"
    process = start([*JFB, *TRAIN, "--out", str(run_dir)])
    wait_for_checkpoint(process, run_dir / "last.pt", min_step=4)  # last.prev.pt exists from step 2 on
    process.send_signal(signal.SIGKILL)
    finish(process)
    data = (run_dir / "last.pt").read_bytes()
    (run_dir / "last.pt").write_bytes(data[: len(data) // 2])
    stdout = succeed([*JFB, *TRAIN, "--out", str(run_dir), "--resume"])
    assert "cannot load checkpoint safely" in stdout and "resuming from the previous checkpoint" in stdout
    assert "resumed from " + str(run_dir / "last.prev.pt") in stdout
    assert same_weights(run_dir / "last.pt", reference / "single" / "last.pt")


def test_a_corrupted_checkpoint_fails_its_checksum(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"value": torch.arange(1000.0)})
    outer = torch.load(path, weights_only=True)
    assert outer["format"] == FORMAT
    outer["payload"][-100] ^= 0xFF  # a flipped byte inside the payload, the stored checksum kept
    torch.save(outer, path)
    with pytest.raises(JfbError, match="checksum mismatch"):
        load_checkpoint(path)


def test_the_previous_checkpoint_is_kept_and_a_failed_write_overwrites_nothing(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"value": torch.tensor(1.0)}, keep_previous=True)
    save_checkpoint(path, {"value": torch.tensor(2.0)}, keep_previous=True)
    assert load_checkpoint(previous_path(path))["value"] == 1.0 and load_checkpoint(path)["value"] == 2.0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_save = torch.save

    def full_disk(obj, target, **kwargs):
        if isinstance(target, io.BytesIO):  # serialising in memory works
            return real_save(obj, target, **kwargs)
        target.write(b"partial")  # the file on disk fills up mid-write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(StorageError, match="No space left on device"):
        save_checkpoint(path, {"value": torch.tensor(3.0)}, keep_previous=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left either


def test_a_crash_while_keeping_the_previous_checkpoint_never_leaves_one_file_under_both_names(tmp_path, monkeypatch):
    """Found by the chaos soak: killed between keeping the old last.pt and renaming the new one in, last.pt and
    last.prev.pt were one file (a hard link), and one corruption of last.pt took the fallback with it."""
    path = tmp_path / "last.pt"
    for value in (1.0, 2.0):
        save_checkpoint(path, {"value": torch.tensor(value)}, keep_previous=True)
    real_replace = os.replace

    def crash_before_keeping(source, target):
        if str(source).endswith(".link.tmp"):
            raise SystemExit("killed")  # SIGKILL after the new last.pt is in place
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_before_keeping)
    with pytest.raises(SystemExit):
        save_checkpoint(path, {"value": torch.tensor(3.0)}, keep_previous=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not os.path.samefile(path, previous_path(path))
    assert load_checkpoint(path)["value"] == 3.0 and load_checkpoint(previous_path(path))["value"] == 1.0
    path.write_bytes(path.read_bytes()[:100])  # last.pt damaged in place: the fallback is intact
    assert load_resumable(path, log=lambda m: None)[0]["value"] == 1.0
    assert not path.exists() and unreadable_path(path).stat().st_size == 100  # moved aside, kept for a look
    save_checkpoint(path, {"value": torch.tensor(4.0)}, keep_previous=True)  # the next write tidies up
    assert not list(tmp_path.glob("*.link.tmp"))
    assert load_checkpoint(previous_path(path))["value"] == 1.0  # the damaged file never becomes the fallback


def test_a_full_disk_stops_training_with_exit_1_and_the_last_checkpoint_intact(tmp_path, monkeypatch, capsys):
    real_fsync, checkpoint_writes = os.fsync, []

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith("last.pt"):
            checkpoint_writes.append(fd)
            if len(checkpoint_writes) == 3:  # the third write of last.pt finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run_dir = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "intact: last.pt, last.prev.pt" in err
    assert load_checkpoint(run_dir / "last.pt")["position"]["step"] == 4  # the second checkpoint
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_one_percent_of_batches_poisoned_with_nan_are_skipped_and_cost_no_accuracy(tmp_path, monkeypatch):
    """A reduced MNIST budget (20,000 images, 2 epochs, 314 steps); each training batch is poisoned
    with probability 1% (seeded)."""
    config = dict(
        epochs=2,
        limit_train=20_000,
        batch_size=128,
        solver="picard",
        tol=None,
        max_iter=8,
        test_every_epoch=False,
        checkpoint_every=0,
        threads=2,
    )
    clean = train(config_of(**config), tmp_path / "clean", progress=False, log=lambda m: None)
    chooser, poisoned = random.Random(3), []
    original = loop.batches

    def batches(split, batch_size, normalize, **kwargs):
        for inputs, *rest in original(split, batch_size, normalize, **kwargs):
            if kwargs.get("augment") is None and kwargs.get("shuffle_seed") is not None and chooser.random() < 0.01:
                inputs = inputs.clone()
                inputs[0, 0, 0, 0] = float("nan")
                poisoned.append(1)
            yield inputs, *rest

    monkeypatch.setattr(loop, "batches", batches)
    noisy = train(config_of(**config), tmp_path / "noisy", progress=False, log=lambda m: None)
    records = [json.loads(line) for line in (tmp_path / "noisy" / "metrics.jsonl").read_text().splitlines()]
    assert len(poisoned) >= 2 and sum(r["skipped_batches"] for r in records) == len(poisoned)
    assert abs(noisy.test_acc_best_val - clean.test_acc_best_val) <= 0.3


def test_preempt_signals_must_be_catchable():
    with pytest.raises(JfbError, match="'SIGKILL' is not a signal training can catch"):
        config_of(preempt_signals=("SIGKILL",))
    assert config_of(preempt_signals=()).preempt_signals == ()


def test_a_peer_failure_is_not_reported_as_a_shape_problem(monkeypatch):
    import jfb
    import jfb.binding

    def operator(u, x):
        raise RuntimeError("Timed out waiting 3000ms for recv operation to complete")

    with pytest.raises(JfbError, match="the operator failed on u0 = zeros shaped like x"):  # one process: a hint
        jfb.ImplicitLayer(operator)(torch.zeros(2, 3))
    monkeypatch.setattr(jfb.binding, "distributed_world_size", lambda: 2)  # several: maybe a peer's failure
    with pytest.raises(RuntimeError, match="Timed out waiting") as raised:
        jfb.ImplicitLayer(operator)(torch.zeros(2, 3))
    assert not isinstance(raised.value, JfbError)


def test_the_previous_checkpoint_is_named_after_the_one_it_precedes():
    assert previous_path(Path("a/last.pt")) == Path("a/last.prev.pt")
    assert previous_path(Path("run/best.pt")) == Path("run/best.prev.pt")
