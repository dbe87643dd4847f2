"""Training configuration: one dataclass, loadable from TOML, unknown keys rejected with a hint."""

from __future__ import annotations

import difflib
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..backward import get_backward
from ..data import DATASETS, Augmentation, dataset_info
from ..errors import JfbError, unknown_name
from ..precision import check_precision
from ..settings import setting
from ..solvers import SolveOptions
from .preemption import signal_numbers

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
DEVICES = ("cpu", "cuda")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: options a resumed run may change (a run may move between CPU and GPU; bit-identity holds only on one device)
RUNTIME_OPTIONS = ("threads", "checkpoint_every", "data_dir", "device", "preempt_signals", "dist_timeout_s")


@dataclass
class TrainConfig:
    dataset: str = "mnist"
    arch: str | None = None  # defaults to the dataset's paper architecture
    model: str = "implicit"  # or "explicit" (the same layers, R applied explicit_depth times)
    explicit_depth: int = 3
    latent_batch_norm: bool = True
    gamma: float | None = None  # the latent operator's output scale; default the architecture's
    lipschitz_rescale: bool = (
        False  # before each training solve, shrink the latent convs if T is not gamma-Lipschitz on the batch
    )
    solver: str = "anderson"
    backward: str = "jfb"
    tol: float = 1e-2
    stop_mode: str = "rel"
    max_iter: int = 50
    fixed_depth: bool = False  # training solves run exactly max_iter iterations (tol unused)
    eval_tol: float | None = None  # evaluation solves to this tolerance; default: as in training
    eval_max_iter: int | None = None  # evaluation's depth (fixed depth) or cap; default max_iter
    depth_start: int | None = None  # fixed depth: grow the training depth from this (epoch 1) to max_iter (last epoch)
    freeze_converged: bool = False
    solver_options: dict[str, Any] = field(default_factory=dict)  # e.g. {memory = 3} for Anderson
    epochs: int = 5
    batch_size: int = 100
    optimizer: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    jacobian_penalty: float = 0.0  # weight of the Hutchinson estimate of ||J||_F^2 / d at u* in the loss (0: off)
    jacobian_probes: int = 1  # Gaussian probes per step for that estimate
    correction: int = 0  # fixed-point correction: a loss on this many evenly spaced iterates of each training solve
    correction_weight: float = 0.5  # its weight (times the mean cross-entropy over those iterates)
    ema_decay: float | None = (
        None  # evaluate (and select, save as best.pt) an exponential moving average of the weights
    )
    momentum: float = 0.9
    schedule: str = "onecycle"
    step_size: int = 10  # epochs per decay of the "step" schedule
    augment: bool = False
    augment_rotation: float = 0.0  # with augment: also rotate each image by up to this many degrees
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    data_dir: str | None = None
    max_bad_batches: int = 10  # consecutive non-finite batches before training stops
    checkpoint_every: int = 200  # steps between mid-epoch checkpoints (0: at the end of each epoch only)
    warm_start: bool = False  # start each sample's solve from its fixed point of the previous epoch
    test_every_epoch: bool = True  # False: test accuracy only of the last and the validation-selected epoch
    precision: str = "fp32"  # training under autocast: "bf16" or "fp16" (with a gradient scaler); T's state stays fp32
    eval_precision: str | None = None  # evaluation's autocast precision; default: as in training
    compile: bool = False  # torch.compile the embedding, the operator and the head (in place: same state dict)
    channels_last: bool = True  # NHWC memory layout: ~25% faster convolutions on CPU (measured)
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-identical reruns and resumes
    preempt_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")  # write last.pt and exit 75 on these (empty: off)
    dist_timeout_s: float = 300.0  # a collective waiting longer on a peer raises (torchrun then restarts or stops)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def architecture(self) -> str:
        return self.arch or self.dataset

    def validate(self) -> None:
        checks = [
            (self.tol > 0, "tol", "a number > 0"),
            (self.eval_tol is None or self.eval_tol > 0, "eval_tol", "a number > 0"),
            (self.eval_max_iter is None or self.eval_max_iter >= 1, "eval_max_iter", "an integer >= 1"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.jacobian_penalty >= 0, "jacobian_penalty", "a number >= 0"),
            (self.jacobian_probes >= 1, "jacobian_probes", "an integer >= 1"),
            (self.correction >= 0, "correction", "an integer >= 0"),
            (self.correction_weight > 0, "correction_weight", "a number > 0"),
            (0 <= self.augment_rotation <= 180, "augment_rotation", "in [0, 180] (degrees)"),
            (self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay", "in (0, 1)"),
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.lr > 0, "lr", "a number > 0"),
            (self.explicit_depth >= 1, "explicit_depth", "an integer >= 1"),
            (self.max_bad_batches >= 1, "max_bad_batches", "an integer >= 1"),
            (self.checkpoint_every >= 0, "checkpoint_every", "an integer >= 0"),
            (self.limit_train is None or self.limit_train >= 1, "limit_train", "an integer >= 1"),
            (self.limit_test is None or self.limit_test >= 1, "limit_test", "an integer >= 1"),
        ]
        if self.gamma is not None and not 0 < self.gamma <= 1:
            raise JfbError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.lipschitz_rescale and self.model != "implicit":
            raise JfbError("lipschitz_rescale needs model 'implicit' (it keeps the fixed-point operator contractive)")
        if self.depth_start is not None and not self.fixed_depth:
            raise JfbError("depth_start needs fixed_depth = true (it schedules the fixed training depth)")
        if (self.jacobian_penalty or self.correction) and self.model != "implicit":
            raise JfbError("jacobian_penalty and correction need model 'implicit' (they regularise its fixed point)")
        if self.augment_rotation and not self.augment:
            raise JfbError("augment_rotation needs augment = true (it is part of the training augmentation)")
        if self.warm_start and self.model != "implicit":
            raise JfbError("warm_start needs model 'implicit' (an explicit network has no fixed point to reuse)")
        for ok, name, requirement in checks:
            if not ok:
                raise JfbError(f"{name} must be {requirement}, got {getattr(self, name)!r}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise unknown_name(name, getattr(self, name), allowed)
        self.solve_options(), self.solve_options(evaluation=True), get_backward(self.backward)
        signal_numbers(self.preempt_signals)
        check_precision(self.precision, self.device)
        check_precision(self.evaluation_precision, self.device)
        if self.depth_start is not None and not 1 <= self.depth_start <= self.max_iter:
            raise JfbError(f"depth_start must be in [1, max_iter = {self.max_iter}], got {self.depth_start!r}")
        if not self.dist_timeout_s > 0:
            raise JfbError(f"dist_timeout_s must be a number > 0, got {self.dist_timeout_s!r}")

    @property
    def evaluation_precision(self) -> str:
        return self.eval_precision or self.precision

    def augmentation(self) -> Augmentation | None:
        """The training augmentation: the dataset's, with ``augment_rotation``; None without ``augment``."""
        if not self.augment:
            return None
        return replace(dataset_info(self.dataset).augmentation, rotation=self.augment_rotation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_run(self, saved: dict[str, Any]) -> bool:
        """Whether a checkpoint written with ``saved`` continues this run: options that do not
        change the numbers (threads, checkpoint frequency, data location) may differ."""

        def numeric(values: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in values.items() if k not in RUNTIME_OPTIONS}

        mine = self.to_dict()
        return numeric(mine) == numeric({**mine, **saved})  # options an older checkpoint lacks count as equal

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(known)}"
                raise JfbError(f"{source}: unknown key {key!r}{hint}")
        return cls(**values)

    def solve_options(self, evaluation: bool = False, epoch: int | None = None) -> SolveOptions:
        """The forward-solve options of training (in epoch ``epoch``, counted from 0, when the depth
        is scheduled), or of evaluation (``eval_tol`` and ``eval_max_iter`` when set)."""
        if evaluation:
            tol = self.eval_tol if self.eval_tol is not None else None if self.fixed_depth else self.tol
            max_iter = self.eval_max_iter or self.max_iter
        else:
            tol, max_iter = None if self.fixed_depth else self.tol, self.training_depth(epoch)
        return SolveOptions(
            solver=self.solver,
            tol=tol,
            max_iter=max_iter,
            stop_mode=self.stop_mode,
            freeze_converged=self.freeze_converged,
            solver_options=self.solver_options,
        )

    def training_depth(self, epoch: int | None) -> int:
        """``max_iter``, or with ``depth_start`` the linear schedule from it to ``max_iter`` over the epochs."""
        if self.depth_start is None or epoch is None or self.epochs == 1:
            return self.max_iter
        return round(self.depth_start + (self.max_iter - self.depth_start) * epoch / (self.epochs - 1))

    def layer_options(self) -> dict[str, Any]:
        """What :class:`~jfb.ImplicitLayer` takes from this configuration."""
        return dict(
            backward=self.backward,
            options=self.solve_options(),
            eval_options=self.solve_options(evaluation=True),
            jacobian_probes=self.jacobian_probes if self.jacobian_penalty else 0,
            correction=self.correction,
        )


def packaged_recipes() -> list[str]:
    """The configurations shipped in ``jfb/configs`` (a dataset's default, and named recipes such as ``mnist-long``)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.toml"))


def load_target(target: str) -> tuple[dict[str, Any], str]:
    """The settings a dataset name (its packaged config, if any) or a .toml file stands for, and their source."""
    path = Path(target)
    if path.suffix == ".toml":
        if not path.is_file():
            raise JfbError(f"config file {path} does not exist")
    elif target in DATASETS or target in packaged_recipes():
        path = CONFIG_DIR / f"{target}.toml"
        if not path.is_file():
            return {"dataset": target}, "options"
    else:
        choices = ", ".join(dict.fromkeys([*DATASETS, *packaged_recipes()]))
        raise JfbError(f"unknown dataset or config {target!r}; choose one of {choices} or a .toml file")
    with open(path, "rb") as f:
        return tomllib.load(f), str(path)


@dataclass(frozen=True)
class TrainSettings:
    """What ``jfb train`` takes besides the configuration fields it may override."""

    target: str = setting(help="mnist, svhn, cifar10, a packaged recipe (mnist-long), or a .toml file", positional=True)
    out: str | None = setting(None, "run dir (default runs/DATASET-TIME)")
    resume: bool = setting(False, "continue from RUN_DIR/last.pt")

    def config(self, overrides: dict[str, Any]) -> TrainConfig:
        """The target's configuration with ``overrides`` (options given on the command line) applied."""
        values, source = load_target(self.target)
        config = TrainConfig.from_dict({**values, **overrides}, source=source)
        if config.fixed_depth and "tol" in overrides:
            raise JfbError(
                f"--tol has no effect: {source} trains at a fixed depth (fixed_depth = true); add --no-fixed-depth "
                "to solve to a tolerance, or --eval-tol for evaluation"
            )
        return config

    def run_dir(self, config: TrainConfig) -> Path:
        return Path(self.out or f"runs/{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
