"""``jfb bench epoch``: one training epoch of a configured model on synthetic data of its dataset's
shape (time only: for data sets that cannot be fetched, e.g. CIFAR-10 on an offline GPU machine).

Random images (standard normal, already "normalised") and random labels; the configuration's
model, optimiser, schedule, batch size, forward solve and backward mode; no evaluation. One row
per autocast precision, run one after the other from the same seed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from ..models.configs import architecture
from ..tables import csv_text
from ..train import TrainConfig, build_from_config
from ..train.loop import make_optimizer
from .step import StepSetting


def synthetic_epoch(config: TrainConfig, samples: int, setting: StepSetting) -> dict:
    """Train ``config``'s model for one pass over ``samples`` random images; seconds and statistics."""
    torch.manual_seed(config.seed)
    model = build_from_config(config)
    arch = architecture(config.architecture)
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.randn(samples, *arch.input_shape, generator=generator)
    labels = torch.randint(0, arch.classes, (samples,), generator=generator)
    steps = -(-samples // config.batch_size)
    optimizer, scheduler = make_optimizer(config, model, steps)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.train()
    iterations, statuses = 0.0, {}
    setting.synchronize()
    started = time.perf_counter()
    for start in range(0, samples, config.batch_size):
        batch = images[start : start + config.batch_size].to(config.device, non_blocking=True).contiguous(memory_format=memory_format)
        with setting.autocast():
            loss = nn.functional.cross_entropy(model(batch), labels[start : start + config.batch_size].to(config.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        stats = getattr(getattr(model, "implicit", None), "last_stats", None)
        if stats is not None:
            iterations += stats.forward.t_evals
            statuses[str(stats.status)] = statuses.get(str(stats.status), 0) + 1
    setting.synchronize()
    seconds = time.perf_counter() - started
    return {"architecture": config.architecture, "device": config.device, "precision": setting.precision, "samples": samples,
            "batch_size": config.batch_size, "epoch_s": seconds, "samples_per_s": samples / seconds,
            "forward_iters_mean": iterations / steps, "final_loss": float(loss), "statuses": json.dumps(statuses, sort_keys=True)}


def epoch_table(config: TrainConfig, samples: int, precisions: list[str], out: Path, log=print) -> list[dict]:
    rows = []
    for precision in precisions:
        rows.append(synthetic_epoch(config, samples, StepSetting(config.device, precision)))
        log(json.dumps(rows[-1]))
    (out / "epoch.csv").write_text(csv_text(rows))
    base = rows[0]["epoch_s"]
    lines = ["| architecture | device | precision | samples | epoch (s) | samples / s | vs first | forward iterations / batch |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['architecture']} | {r['device']} | {r['precision']} | {r['samples']} | {r['epoch_s']:.1f} | {r['samples_per_s']:.0f} | "
              f"{base / r['epoch_s']:.2f}x | {r['forward_iters_mean']:.1f} |" for r in rows]
    (out / "epoch.md").write_text("\n".join(lines) + "\n\nsynthetic data (random images and labels), one epoch, no evaluation\n")
    return rows
