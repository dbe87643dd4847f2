"""Long-run soak: does a training stay flat? Resident memory (CUDA memory where present) and step time sampled
every N steps of a long run, with the fitted growth per 1,000 steps and its noise.

    python scripts/soak.py --model mnist --steps 20000 --every 250 --out runs/soak-mnist
    python scripts/soak.py --model lm --steps 20000 --every 250 --out runs/soak-lm

``mnist``: `jfb train mnist`'s path (the one loop, epochs, validation, checkpoints) on a small configuration
(2,048 images, batch 32, Picard at depth 4, JFB; as many epochs as the steps need). ``lm``: `jfb train lm`'s
path (the one loop, a metrics row every 10 steps, `last.pt` every 100: the defaults) at the workload's smoke
size. The sampler wraps the loop's task (every N finished steps: resident memory from /proc, CUDA memory, the
mean step time since the last sample), so the run is the command's own. The first tenth of the samples is left
out of the fit (warm-up: allocator pools, caches). Writes OUT/soak.csv (the samples) and OUT/soak.json (the
fit); prints the JSON.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import torch

import jfb.train.classifier as classifier
import jfb.train.steps as step_runs
from jfb.train import TrainConfig, train
from jfb.train.loop import run_loop
from jfb.workloads import get_workload

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_mib() -> float:
    """This process's resident memory now (not its peak)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


class Sampled:
    """A task of the loop, sampled every ``every`` finished steps; everything else is the task's own."""

    def __init__(self, task, every: int, samples: list[dict], leak_kib: int = 0) -> None:
        self.task, self.every, self.samples, self.leak_kib = task, every, samples, leak_kib
        self.last = (task.next_step, time.perf_counter())
        self.leaked: list[torch.Tensor] = []

    def __getattr__(self, name: str):
        return getattr(self.task, name)

    def step(self, index, watch):
        return self.task.step(index, watch)

    def after(self, done: int) -> None:
        self.task.after(done)
        if self.leak_kib:  # a deliberate leak, to check that the soak sees one
            self.leaked.append(torch.ones(self.leak_kib * 256))
        if done % self.every == 0:
            now = time.perf_counter()
            since_step, since = self.last
            cuda = torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
            ms = 1000 * (now - since) / max(done - since_step, 1)
            self.samples.append({"step": done, "rss_mib": resident_mib(), "cuda_mib": cuda, "ms_per_step": ms})
            self.last = (done, time.perf_counter())


def sampling(samples: list[dict], every: int, leak_kib: int = 0):
    def loop(task, watch, progress=False, log=print, until=None):
        return run_loop(Sampled(task, every, samples, leak_kib), watch, progress, log, until)

    return loop


def train_mnist(steps: int, out: Path) -> None:
    config = TrainConfig.from_dict(
        {
            "limit_train": 2048, "limit_test": 256, "batch_size": 32, "epochs": -(-steps // 64), "threads": 2,
            "augment": False, "depth_start": None, "checkpoint_every": 0, "test_every_epoch": False,
            "solve": {"solver": "picard", "tol": None, "max_iter": 4}, "eval_solve": {"tol": None, "max_iter": 4},
        },
        source="soak",
    )  # fmt: skip
    train(config, out, progress=False, log=lambda m: None, overwrite=True)


def train_lm(steps: int, out: Path) -> None:
    workload = get_workload("lm")
    smoke = {**workload.smoke, "steps": steps}  # the defaults: last.pt every 100 steps, a metrics row every 10
    workload.train(dataclasses.replace(workload.config(), **smoke), out=out, log=lambda m: None, overwrite=True)


def fit(samples: list[dict], key: str) -> dict:
    """Least-squares growth of ``key`` per 1,000 steps after the warm-up tenth, and its standard error."""
    kept = [s for s in samples[len(samples) // 10 :] if s[key] == s[key]]  # NaN: not measured (no CUDA)
    if len(kept) < 3:
        return {"per_1000_steps": None, "noise": None, "first": None, "last": None}
    x, y = [s["step"] / 1000 for s in kept], [s[key] for s in kept]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx
    residuals = [b - (my + slope * (a - mx)) for a, b in zip(x, y)]
    noise = (sum(r * r for r in residuals) / (len(x) - 2) / sxx) ** 0.5
    return {"per_1000_steps": slope, "noise": noise, "first": y[0], "last": y[-1]}


def soak(model: str, steps: int, every: int, out: Path, leak_kib: int = 0) -> dict:
    samples: list[dict] = []
    loop = sampling(samples, every, leak_kib)
    classifier.run_loop = step_runs.run_loop = loop  # the sampler wraps each training's task
    started = time.perf_counter()
    (train_mnist if model == "mnist" else train_lm)(steps, out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(samples[0]))
        writer.writeheader()
        writer.writerows(samples)
    result = {
        "model": model,
        "steps": samples[-1]["step"],
        "samples": len(samples),
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        **{key: fit(samples, key) for key in ("rss_mib", "cuda_mib", "ms_per_step")},
    }
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="Long-run soak of one training (see the module docstring).")
    parser.add_argument("--model", choices=("mnist", "lm"), default="mnist")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=250, help="sample every N steps")
    parser.add_argument("--out", default="runs/soak")
    parser.add_argument("--leak-kib", type=int, default=0, help="leak N KiB per step on purpose (checks the soak)")
    args = parser.parse_args()
    print(json.dumps(soak(args.model, args.steps, args.every, Path(args.out), args.leak_kib)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
