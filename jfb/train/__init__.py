"""Training: configuration, loop, checkpoints and metrics (callable without the CLI)."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loop import TrainingStopped, build_from_config, evaluate, input_normalizer, restore_model, train

__all__ = [
    "TrainConfig",
    "TrainingStopped",
    "build_from_config",
    "evaluate",
    "input_normalizer",
    "load_checkpoint",
    "restore_model",
    "save_checkpoint",
    "train",
]
