"""Chaos soak: one training job driven through many faults, compared bit for bit with an uninterrupted run.

    python scripts/chaos.py --faults 20 --seed 0 --out runs/chaos

The job is `jfb train mnist` on a subset (one process, --deterministic, one thread), or with ``--workload NAME``
a workload at its smoke size (`jfb train prefix-sums ...`; under torchrun with ``--parallel ddp``). Faults are drawn
from a seeded schedule at random training steps: SIGKILL, SIGTERM (exit 75, rerun with --resume), `last.pt`
truncated or a byte flipped between runs, ENOSPC on a file write (exit 1, rerun), and, for MNIST, NaN batches (the
same batches poisoned in the uninterrupted run, so both skip them). With ``--processes 2`` the job runs as 2 gloo
processes under torchrun and a worker is SIGKILLed instead of the job (torchrun restarts the group, which resumes).
After the last fault the job runs to its end; the weights and the metrics (all but the timing columns) must equal
the uninterrupted run's. Prints one JSON line: faults injected, survived, restarts, the wall-time overhead.
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
from dataclasses import dataclass
from pathlib import Path

KINDS = ("sigkill", "sigterm", "truncate", "flip", "enospc", "nan")
TIMING = ("epoch_time_s", "samples_per_s", "gradient_check_s", "ms_per_step")


def job(limit_train: int, epochs: int) -> list[str]:
    return [
        "train", "mnist", "--limit-train", str(limit_train), "--limit-test", "200", "--epochs", str(epochs),
        "--batch-size", "50", "--checkpoint-every", "1", "--deterministic", "--threads", "1", "--no-progress",
        "--no-augment", "--depth-start", "none", "--max-iter", "3", "--eval-precision", "fp32",
    ]  # fmt: skip


def workload_job(name: str, steps: int, processes: int) -> list[str]:
    """`jfb train NAME` at its smoke size (the tests' settings), a checkpoint and a metrics row every step."""
    from jfb.workloads import get_workload

    smoke = {**get_workload(name).smoke, "steps": steps}
    plain = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in smoke.items()}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in plain.items()]
    parallel = ["--parallel", "ddp"] if processes > 1 else []
    return ["train", name, *flags, *parallel, "--checkpoint-every", "1", "--log-every", "1", "--no-progress"]


def worker(argv: list[str]) -> int:
    """`jfb` with the scheduled faults of this process: ENOSPC on the N-th fsync, NaN in the listed batches."""
    import jfb.train.classifier as loop
    from jfb.cli.main import main

    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"  # a restarted group has free disk
    enospc_at = int(os.environ.get("JFB_CHAOS_ENOSPC_AT", "0")) if first_attempt else 0
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


def _command(argv: list[str], processes: int, restarts: int = 0) -> list[str]:
    worker_argv = [str(Path(__file__).resolve()), "--worker", *argv]
    if processes == 1:
        return [sys.executable, *worker_argv]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*launcher, f"--max-restarts={restarts}", *worker_argv]


def _workers_of(launcher: int) -> list[int]:
    """torchrun's worker processes (its children), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == launcher:
                children.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(children)


def _global_step(run_dir: Path, steps_per_epoch: int) -> int:
    """The step the last checkpoint was written at (-1 when there is none or it cannot be read now)."""
    from jfb.errors import JfbError
    from jfb.train import load_checkpoint

    try:
        checkpoint = load_checkpoint(run_dir / "last.pt")
    except (JfbError, OSError):
        return -1
    if "training" in checkpoint:  # a workload's
        return checkpoint["training"]["step"]
    position = checkpoint["position"]
    return position["epoch"] * steps_per_epoch + position["step"]


@dataclass
class Job:
    """The job under test: its flags, where it runs, how many processes, the environment of every run."""

    argv: list[str]
    run_dir: Path
    processes: int
    env: dict
    steps_per_epoch: int

    def command(self, restarts: int = 0) -> list[str]:
        return _command([*self.argv, "--out", str(self.run_dir), "--resume"], self.processes, restarts)

    def step(self) -> int:
        return _global_step(self.run_dir, self.steps_per_epoch)


def run(args: argparse.Namespace) -> dict:
    steps_per_epoch = args.limit_train // 50 if args.workload is None else args.steps
    total = steps_per_epoch * args.epochs if args.workload is None else args.steps
    rng = random.Random(args.seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(args.faults)]
    if args.workload is not None:  # a workload's batches are drawn by seeded code, not poisoned here
        kinds = [kind if kind != "nan" else "sigterm" for kind in kinds]
    if args.processes > 1:  # torchrun: a worker is killed (the group restarts) instead of the whole job
        kinds = ["worker_kill" if kind == "sigkill" else kind for kind in kinds]
    rng.shuffle(kinds)
    nan_steps = sorted(rng.sample(range(total), kinds.count("nan")))
    nan = ",".join(f"{s // steps_per_epoch}:{s % steps_per_epoch}" for s in nan_steps)
    faults = sorted((rng.randrange(2, total - 6), kind) for kind in kinds if kind != "nan")  # room to strike
    if args.workload is None:
        argv = job(args.limit_train, args.epochs)
    else:
        argv = workload_job(args.workload, total, args.processes)
    out = Path(args.out)
    env = {**os.environ, "JFB_CHAOS_NAN": nan, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    reference = _command([*argv, "--out", str(out / "reference")], args.processes)
    subprocess.run(reference, env=env, check=True, capture_output=True)
    reference_s = time.perf_counter() - started
    chaos = Job(argv, out / "chaos", args.processes, env, steps_per_epoch)
    started, restarts, injected = time.perf_counter(), 0, len(nan_steps)
    extra = [kind for kind in kinds if kind != "nan"]  # more of the same kinds while some did not strike
    while faults and injected < args.faults:
        at, kind = faults.pop(0)
        struck = _inject(kind, at, chaos, rng)
        injected, restarts = injected + struck, restarts + 1 + (kind == "worker_kill" and struck)
        if not faults and injected < args.faults and chaos.step() < total - 6:
            faults.append((chaos.step() + 2, extra[injected % len(extra)]))
    final = subprocess.run(chaos.command(), env=env, capture_output=True, text=True)
    chaos_s = time.perf_counter() - started
    same = final.returncode == 0 and _same_run(out / "reference", chaos.run_dir)
    return {
        "job": args.workload or "mnist",
        "processes": args.processes,
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


def _inject(kind: str, at: int, job: Job, rng: random.Random) -> int:
    """Run the job with --resume until fault ``kind`` strikes at step ``at``; 1 when it struck."""
    if kind in ("truncate", "flip"):  # a damaged last.pt between two runs
        return _damage(job.run_dir / "last.pt", kind, rng)
    if kind == "enospc":  # rank 0 writes every file; a full disk stops the job (exit 1)
        enospc = {**job.env, "JFB_CHAOS_ENOSPC_AT": str(rng.randrange(2, 6))}  # a write within its first steps
        return int(subprocess.run(job.command(), env=enospc, capture_output=True).returncode != 0)
    first = max(at, job.step() + 1)  # a step this process itself finishes
    process = subprocess.Popen(
        job.command(restarts=2 if kind == "worker_kill" else 0),
        env=job.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while process.poll() is None and job.step() < first:
        time.sleep(0.05)
    if process.poll() is not None:
        return 0
    if kind == "worker_kill":
        return _kill_a_worker(process, job)
    process.send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
    return int(process.wait() in (-signal.SIGKILL, 75, 1))


def _kill_a_worker(launcher: subprocess.Popen, job: Job) -> int:
    """SIGKILL one torchrun worker; torchrun restarts the group, which resumes. Once the restarted group has
    written a checkpoint of its own the launcher is stopped (SIGTERM: a preemption) to end the segment."""
    workers = _workers_of(launcher.pid)
    if not workers:
        return 0
    killed_at = job.step()
    try:
        os.kill(workers[-1], signal.SIGKILL)
    except ProcessLookupError:  # the worker exited between the listing and the kill
        return 0
    while launcher.poll() is None and job.step() <= killed_at:
        time.sleep(0.05)
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGTERM)
    launcher.wait()
    return 1


def _damage(last: Path, kind: str, rng: random.Random) -> int:
    """Truncate or flip a byte of last.pt; only once a predecessor exists (one damaged only copy cannot be
    survived by any design: the resume refuses in one line)."""
    if not last.is_file() or not last.with_name(f"{last.stem}.prev{last.suffix}").is_file():
        return 0
    data = bytearray(last.read_bytes())
    if kind == "truncate":
        data = data[: rng.randrange(1, len(data))]
    else:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    last.write_bytes(bytes(data))
    return 1


def _same_run(reference: Path, chaos: Path) -> bool:
    """The same weights (a workload's model.pt, else last.pt) and the same metrics rows but for their times."""
    import torch

    from jfb.train import load_checkpoint

    def records(run_dir: Path) -> str:  # as JSON text: NaN (an untested epoch) equals NaN
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return json.dumps([{k: v for k, v in r.items() if k not in TIMING} for r in rows], sort_keys=True)

    name = "model.pt" if (reference / "model.pt").is_file() else "last.pt"
    a, b = (load_checkpoint(d / name)["model"] for d in (reference, chaos))
    return records(reference) == records(chaos) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description="Chaos soak of one training job (see the module docstring).")
    parser.add_argument("--faults", type=int, default=20, help="faults to inject (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    parser.add_argument("--limit-train", type=int, default=1000, help="training images (50 per step)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the job")
    parser.add_argument("--processes", type=int, default=1, help="1, or 2+ for gloo processes under torchrun")
    parser.add_argument("--workload", default=None, help="a workload (prefix-sums, lm) instead of the MNIST job")
    parser.add_argument("--steps", type=int, default=40, help="the workload's training steps")
    parser.add_argument("--out", default="runs/chaos", help="where the reference and the chaos runs go")
    result = run(parser.parse_args())
    print(json.dumps(result))
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
