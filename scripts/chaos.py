"""Chaos soak: one training job driven through many faults, compared bit for bit with an uninterrupted run.

    python scripts/chaos.py --faults 20 --seed 0 --out runs/chaos

The job is `jfb train mnist` on a subset (one process, --deterministic, one thread). Faults are drawn from a
seeded schedule at random training steps: SIGKILL, SIGTERM (exit 75, rerun with --resume), `last.pt` truncated or
a byte flipped between runs, ENOSPC on a file write (exit 1, rerun), and NaN batches (the same batches poisoned in
the uninterrupted run, so both skip them). After the last fault the job runs to its end; the weights and the
metrics (all but the timing columns) must equal the uninterrupted run's. Prints one JSON line: faults injected,
survived, restarts, the wall-time overhead. Not covered: faults under torchrun (each is tested on its own in
tests/test_fault_tolerance.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("sigkill", "sigterm", "truncate", "flip", "enospc", "nan")
TIMING = ("epoch_time_s", "samples_per_s", "gradient_check_s")


def job(limit_train: int, epochs: int) -> list[str]:
    return [
        "train", "mnist", "--limit-train", str(limit_train), "--limit-test", "200", "--epochs", str(epochs),
        "--batch-size", "50", "--checkpoint-every", "1", "--deterministic", "--threads", "1", "--no-progress",
        "--no-augment", "--depth-start", "none", "--max-iter", "3", "--eval-precision", "fp32",
    ]  # fmt: skip


def worker(argv: list[str]) -> int:
    """`jfb` with the scheduled faults of this process: ENOSPC on the N-th fsync, NaN in the listed batches."""
    import jfb.train.loop as loop
    from jfb.cli.main import main

    enospc_at = int(os.environ.get("JFB_CHAOS_ENOSPC_AT", "0"))
    if enospc_at:
        real_fsync, calls = os.fsync, [0]

        def fsync(fd: int) -> None:
            calls[0] += 1
            if calls[0] == enospc_at:
                raise OSError(28, "No space left on device (chaos)")
            real_fsync(fd)

        os.fsync = fsync
    poisoned = {tuple(map(int, p.split(":"))) for p in os.environ.get("JFB_CHAOS_NAN", "").split(",") if p}
    if poisoned:
        batches = loop.batches

        def poisoning(*args, **kwargs):
            if kwargs.get("shuffle_seed") is None:  # evaluation
                yield from batches(*args, **kwargs)
                return
            epoch, step = kwargs["shuffle_seed"] % 100_003, kwargs.get("start", 0)
            for inputs, labels, index in batches(*args, **kwargs):
                if (epoch, step) in poisoned:
                    inputs = inputs.clone()
                    inputs.view(-1)[0] = float("nan")
                yield inputs, labels, index
                step += 1

        loop.batches = poisoning
    return main(argv)


def _command(argv: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", *argv]


def _global_step(run_dir: Path, steps_per_epoch: int) -> int:
    """The step the last checkpoint was written at (-1 when there is none or it cannot be read now)."""
    from jfb.errors import JfbError
    from jfb.train import load_checkpoint

    try:
        position = load_checkpoint(run_dir / "last.pt")["position"]
    except (JfbError, OSError, KeyError):
        return -1
    return position["epoch"] * steps_per_epoch + position["step"]


def run(args: argparse.Namespace) -> dict:
    steps_per_epoch = args.limit_train // 50
    total = steps_per_epoch * args.epochs
    rng = random.Random(args.seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(args.faults)]
    rng.shuffle(kinds)
    nan_steps = sorted(rng.sample(range(total), kinds.count("nan")))
    nan = ",".join(f"{s // steps_per_epoch}:{s % steps_per_epoch}" for s in nan_steps)
    faults = sorted((rng.randrange(2, total - 6), kind) for kind in kinds if kind != "nan")  # room to strike
    argv = job(args.limit_train, args.epochs)
    out = Path(args.out)
    env = {**os.environ, "JFB_CHAOS_NAN": nan, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    subprocess.run(_command([*argv, "--out", str(out / "reference")]), env=env, check=True, capture_output=True)
    reference_s = time.perf_counter() - started
    started, restarts, injected = time.perf_counter(), 0, len(nan_steps)
    chaos = out / "chaos"
    for at, kind in faults:
        injected += _inject(kind, at, argv, chaos, env, steps_per_epoch, rng)
        restarts += 1
    final = subprocess.run(_command([*argv, "--out", str(chaos), "--resume"]), env=env, capture_output=True, text=True)
    chaos_s = time.perf_counter() - started
    same = final.returncode == 0 and _same_run(out / "reference", chaos)
    return {
        "faults_scheduled": args.faults,
        "faults_injected": injected,
        "faults_survived": injected if same else 0,
        "restarts": restarts,
        "nan_batches": len(nan_steps),
        "identical": same,
        "reference_s": round(reference_s, 1),
        "chaos_s": round(chaos_s, 1),
        "overhead": round(chaos_s / reference_s, 2),
    }


def _inject(kind: str, at: int, argv: list[str], run_dir: Path, env: dict, steps: int, rng: random.Random) -> int:
    """Run the job with --resume until fault ``kind`` strikes at step ``at``; 1 when it struck."""
    command = _command([*argv, "--out", str(run_dir), "--resume"])
    if kind in ("truncate", "flip"):  # a damaged last.pt between two runs
        last = run_dir / "last.pt"
        if last.is_file():
            data = bytearray(last.read_bytes())
            if kind == "truncate":
                data = data[: rng.randrange(1, len(data))]
            else:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            last.write_bytes(bytes(data))
            return 1
        return 0
    if kind == "enospc":
        enospc = {**env, "JFB_CHAOS_ENOSPC_AT": str(rng.randrange(2, 6))}  # a write within its first steps
        result = subprocess.run(command, env=enospc, capture_output=True)
        return int(result.returncode == 1)
    first = max(at, _global_step(run_dir, steps) + 1)  # a step this process itself finishes
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and _global_step(run_dir, steps) < first:
        time.sleep(0.05)
    if process.poll() is not None:
        return 0
    process.send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
    code = process.wait()
    return int(code in (-signal.SIGKILL, 75))


def _same_run(reference: Path, chaos: Path) -> bool:
    import torch

    from jfb.train import load_checkpoint

    def records(run_dir: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    a, b = (load_checkpoint(d / "last.pt")["model"] for d in (reference, chaos))
    return records(reference) == records(chaos) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description="Chaos soak of one training job (see the module docstring).")
    parser.add_argument("--faults", type=int, default=20, help="faults to inject (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    parser.add_argument("--limit-train", type=int, default=1000, help="training images (50 per step)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the job")
    parser.add_argument("--out", default="runs/chaos", help="where the reference and the chaos runs go")
    result = run(parser.parse_args())
    print(json.dumps(result))
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
