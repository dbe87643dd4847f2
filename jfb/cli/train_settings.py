"""What ``jfb train`` takes besides the configuration fields it may override: the target and the run folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import setting
from ..train.config import TrainConfig
from ..train.recipes import load_target, merge_settings

#: the help of ``--overwrite`` (``jfb train`` of a paper model or a workload)
OVERWRITE_HELP = "start afresh in a run folder that holds a run (its checkpoints and metrics are replaced)"


@dataclass(frozen=True)
class TrainSettings:
    """What ``jfb train`` takes besides the configuration fields it may override."""

    target: str = setting(
        help="mnist, svhn, cifar10, a packaged recipe (mnist-long), a .toml file, or a workload "
        "(prefix-sums, chains, lm: see jfb train NAME --help)",
        positional=True,
    )
    out: str | None = setting(None, "run dir (default runs/DATASET-TIME)")
    resume: bool = setting(False, "continue from RUN_DIR/last.pt")
    overwrite: bool = setting(False, OVERWRITE_HELP)

    def config(self, overrides: dict[str, Any]) -> TrainConfig:
        """The target's configuration with ``overrides`` (options given on the command line) applied; the
        ``solve`` and ``eval_solve`` tables are merged key by key."""
        values, source = load_target(self.target)  # 0.1's flat keys are migrated by from_dict, once
        return TrainConfig.from_dict(merge_settings(values, overrides), source=source)

    def run_dir(self, config: TrainConfig) -> Path:
        return Path(self.out or f"runs/{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
