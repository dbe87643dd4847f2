"""``jfb bench epoch``: one training epoch of a configured model on synthetic data of its dataset's
shape (time only: for data sets that cannot be fetched, e.g. CIFAR-10 on an offline GPU machine).

Random images (standard normal, already "normalised") and random labels; the configuration's
model, optimiser, schedule, batch size, forward solve and backward mode; no evaluation. One row
per autocast precision (``precisions``; default the configuration's own), run one after the other from the same seed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..files import prepare_run_dir
from ..models import architecture
from ..reports import Report, markdown_table, write_report
from ..settings import setting
from ..train import TrainConfig, build_from_config, make_optimization
from ..train.engine import StepSettings, Training
from ..train.setup import memory_format
from .step import StepSetting


def synthetic_epoch(config: TrainConfig, samples: int, setting: StepSetting) -> dict:
    """Train ``config``'s model for one pass over ``samples`` random images through the engine's step (the
    configuration's optimiser, schedule and, under fp16, gradient scaler); seconds and statistics."""
    torch.manual_seed(config.seed)
    model = build_from_config(config)
    arch = architecture(config.architecture)
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.randn(samples, *arch.input_shape, generator=generator)
    labels = torch.randint(0, arch.classes, (samples,), generator=generator)
    steps = -(-samples // config.batch_size)
    statuses: dict[str, int] = {}

    def batch(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = slice(index * config.batch_size, (index + 1) * config.batch_size)
        inputs = images[window].to(config.device, non_blocking=True).contiguous(memory_format=memory_format(config))
        return inputs, labels[window].to(config.device)

    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, float]:
        with setting.autocast():
            value = nn.functional.cross_entropy(model(batch[0]), batch[1])
        stats = getattr(getattr(model, "implicit", None), "last_stats", None)
        if stats is None:
            return value, 0.0
        statuses[str(stats.status)] = statuses.get(str(stats.status), 0) + 1
        return value, float(stats.forward.t_evals)

    optimization = make_optimization(replace(config, precision=setting.precision), model, steps)
    training = Training(model, batch, loss, steps, config.lr, EPOCH_STEP, optimization=optimization)
    setting.synchronize()
    started = time.perf_counter()
    for index in range(steps):
        training.step(index)
    setting.synchronize()
    seconds = time.perf_counter() - started
    measured = training.measured
    return {
        "architecture": config.architecture,
        "device": config.device,
        "precision": setting.precision,
        "samples": samples,
        "batch_size": config.batch_size,
        "epoch_s": seconds,
        "samples_per_s": samples / seconds,
        "forward_iters_mean": sum(measured.iterations) / steps,
        "final_loss": measured.losses[-1],
        "statuses": json.dumps(statuses, sort_keys=True),
    }


#: a timed epoch skips a non-finite step as training does, and is not clipped (the optimisation is the config's)
EPOCH_STEP = StepSettings(bad_batches="skip", clip=0.0, preempt_signals=())


@dataclass(frozen=True)
class EpochBenchSettings:
    target: str = setting(help="mnist, svhn, cifar10, a packaged recipe (mnist-long), or a .toml file", positional=True)
    out: str = setting("runs/bench-epoch", "output folder")
    samples: int = setting(50_000, "random images in the epoch")
    precisions: tuple[str, ...] | None = setting(
        None, "autocast precisions to time, comma-separated: fp32, bf16, fp16 (default: the configuration's precision)"
    )


def epoch_table(config: TrainConfig, settings: EpochBenchSettings, log=print) -> Report:
    out = prepare_run_dir(Path(settings.out))
    rows = []
    for precision in settings.precisions or (config.precision,):
        rows.append(synthetic_epoch(config, settings.samples, StepSetting(config.device, precision)))
        log(json.dumps(rows[-1]))
    base = rows[0]["epoch_s"]
    headers = [
        "architecture",
        "device",
        "precision",
        "samples",
        "epoch (s)",
        "samples / s",
        "vs first",
        "forward iterations / batch",
    ]
    cells = [
        [
            r["architecture"],
            r["device"],
            r["precision"],
            r["samples"],
            f"{r['epoch_s']:.1f}",
            f"{r['samples_per_s']:.0f}",
            f"{base / r['epoch_s']:.2f}x",
            f"{r['forward_iters_mean']:.1f}",
        ]
        for r in rows
    ]
    markdown = (
        markdown_table(headers, cells) + "\nsynthetic data (random images and labels), one epoch, no evaluation\n"
    )
    return write_report(out, "epoch", rows, markdown)
