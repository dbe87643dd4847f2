"""``jfb demo``: a few epochs of the packaged MNIST configuration, on the MNIST files shipped with the package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..settings import setting
from ..train import TrainConfig, TrainResult, load_target, train

DEMO_EPOCHS = 3  # of the packaged MNIST config


@dataclass(frozen=True)
class DemoSettings:
    out: str = setting("runs/demo", "run dir")
    limit_train: int | None = setting(None, "train on the first N images only (for tests)", hidden=True)


def run_demo(settings: DemoSettings, progress: bool = True, log=print) -> TrainResult:
    values, source = load_target("mnist")
    limit = {"limit_train": settings.limit_train} if settings.limit_train else {}
    config = TrainConfig.from_dict({**values, "epochs": DEMO_EPOCHS, **limit}, source=source)
    log(f"demo: {config.epochs} epochs of JFB training on MNIST (run dir {settings.out})")
    return train(config, Path(settings.out), progress=progress, log=log, overwrite=True)  # the demo's own folder
