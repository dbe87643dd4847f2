"""Training: configuration, run setup, the one loop, evaluation, checkpoints and metrics (callable without the CLI).

``train(config, run_dir)`` is ``fit(setup_run(config, run_dir))``; the pieces are public so that
scripts can change a run between setting it up and fitting it. Every training (these classifiers, the
workloads, the benchmarks' steps) goes through :func:`jfb.train.loop.run_loop` and the optimiser step of
:class:`jfb.train.engine.Optimization`.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .classifier import fit, train, train_one_epoch
from .config import TrainConfig
from .evaluation import EvalSettings, evaluate, evaluate_checkpoint
from .optimization import TrainingStopped
from .recipes import load_target
from .records import EpochRecord, PassSummary, TrainResult
from .reference import ImportSettings, import_reference
from .setup import (
    Data,
    Run,
    build_from_config,
    input_normalizer,
    load_data,
    make_optimization,
    restore_model,
    setup_run,
)

__all__ = [
    "Data",
    "EpochRecord",
    "EvalSettings",
    "ImportSettings",
    "PassSummary",
    "Run",
    "TrainConfig",
    "TrainResult",
    "TrainingStopped",
    "build_from_config",
    "evaluate",
    "evaluate_checkpoint",
    "fit",
    "import_reference",
    "input_normalizer",
    "load_checkpoint",
    "load_data",
    "load_target",
    "make_optimization",
    "restore_model",
    "save_checkpoint",
    "setup_run",
    "train",
    "train_one_epoch",
]
