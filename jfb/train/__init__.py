"""Training: configuration, run setup, loop, evaluation, checkpoints and metrics (callable without the CLI).

``train(config, run_dir)`` is ``fit(setup_run(config, run_dir))``; the pieces are public so that
scripts can change a run between setting it up and fitting it.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .classifier_step import TrainingStopped
from .config import TrainConfig
from .evaluation import EvalSettings, evaluate, evaluate_checkpoint
from .loop import fit, train, train_one_epoch
from .recipes import load_target
from .records import EpochRecord, PassSummary, TrainResult
from .reference import ImportSettings, import_reference
from .setup import Data, Run, build_from_config, input_normalizer, load_data, make_optimizer, restore_model, setup_run

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
    "make_optimizer",
    "restore_model",
    "save_checkpoint",
    "setup_run",
    "train",
    "train_one_epoch",
]
