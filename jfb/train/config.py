"""Training configuration: one dataclass, loadable from TOML, unknown keys rejected with a hint."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ..backward import get_backward
from ..data import Augmentation, dataset_info
from ..errors import JfbError, unknown_name
from ..models.blocks import LATENT_NORMS
from ..precision import check_precision
from ..settings import NONE, check_choices, check_ranges, check_types, setting
from ..solvers import SolveOptions
from ..solvers.options import option_names
from .optimization import OPTIMIZERS, SCHEDULES
from .preemption import signal_numbers
from .recipes import flat_settings, migrate_legacy_keys

DEVICES = ("cpu", "cuda")
INITS = ("zeros", "random", "mixed", "learned")
#: options a resumed run may change (a run may move between CPU and GPU; bit-identity holds only on one device)
RUNTIME_OPTIONS = ("threads", "checkpoint_every", "data_dir", "device", "preempt_signals", "dist_timeout_s")


#: the training solve where a configuration does not say otherwise: Anderson to a relative tolerance of 1e-2,
#: at most 50 deep (the packaged MNIST recipe runs Picard at a fixed depth instead)
TRAINING_SOLVE = SolveOptions(solver="anderson", tol=1e-2, max_iter=50, stop_mode="rel")


@dataclass
class TrainConfig:
    """Everything a training run depends on; TOML keys and ``jfb train`` flags are its fields.

    The forward solves are one :class:`~jfb.SolveOptions` for training (``solve``: the TOML table ``[solve]``,
    flags ``--solver --tol --max-iter ...``) and the changes evaluation makes to it (``eval_solve``: the table
    ``[eval_solve]``, flags ``--eval-solver --eval-tol ...``); ``tol = "none"`` is a fixed depth of ``max_iter``.
    """

    dataset: str = setting("mnist", "dataset: mnist, svhn or cifar10")
    arch: str | None = setting(None, "architecture (default: the dataset's paper architecture)")
    model: str = setting("implicit", "implicit, or explicit: the same layers with R applied explicit_depth times")
    explicit_depth: int = setting(3, "applications of R in the explicit twin")
    latent_batch_norm: bool = setting(True, "BatchNorm inside the latent operator")
    gamma: float | None = setting(None, "the latent operator's output scale (default: the architecture's)")
    latent_dropout: float = setting(0.0, "variational dropout in the latent operator, one mask per solve (0: off)")
    latent_norm: str = setting("none", "normalisation of the latent convolutions: none, weight or spectral")
    lipschitz_rescale: bool = setting(
        False, "before each training solve, shrink the latent convs if T is not gamma-Lipschitz on the batch"
    )
    backward: str = setting("jfb", "backward mode: jfb, neumann:K, phantom:K, ift[:cg|gmres], unroll, auto")
    solve: SolveOptions = setting(help="training solve", default_factory=lambda: TRAINING_SOLVE, flags_of=SolveOptions)
    eval_solve: dict[str, Any] = setting(
        help="evaluation solve (default: as in training)",
        default_factory=dict,
        flags_of=SolveOptions,
        prefix="eval_",
    )
    depth_start: int | None = setting(
        None, "with a fixed depth: grow the training depth from this (first epoch) to max_iter (last epoch)"
    )
    epochs: int = setting(5, "training epochs")
    batch_size: int = setting(100, "global batch size")
    optimizer: str = setting("adam", "adam, adamw or sgd")
    lr: float = setting(3e-3, "learning rate (the peak of the one-cycle schedule)")
    weight_decay: float = setting(0.0, "weight decay")
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy, in [0, 1)")
    jacobian_penalty: float = setting(0.0, "weight of the Hutchinson estimate of ||J||_F^2 / d at u* (0: off)")
    jacobian_probes: int = setting(1, "Gaussian probes per step for that estimate")
    correction: int = setting(0, "fixed-point correction: a loss on this many evenly spaced iterates of each solve")
    correction_weight: float = setting(0.5, "its weight (times the mean cross-entropy over those iterates)")
    init: str = setting(
        "zeros", "initial state of each solve: zeros, random, mixed, or learned (Skip-DEQ: a predictor g(x) of u*)"
    )
    init_weight: float = setting(1.0, "with init = learned: weight of the predictor's loss mean((g(x) - u*)^2)")
    ema_decay: float | None = setting(
        None, "evaluate, select and save as best.pt an exponential moving average of the weights with this decay"
    )
    momentum: float = setting(0.9, "SGD momentum")
    schedule: str = setting("onecycle", "learning-rate schedule: onecycle, cosine, step or constant")
    step_size: int = setting(10, "epochs per decay of the step schedule")
    augment: bool = setting(False, "the dataset's training augmentation (random shifts, flips for CIFAR-10)")
    augment_rotation: float = setting(0.0, "with augment: also rotate each image by up to this many degrees")
    seed: int = setting(0, "random seed (weights, data order, augmentation)")
    device: str = setting("cpu", "cpu or cuda")
    threads: int | None = setting(None, "CPU threads (default: torch's)")
    limit_train: int | None = setting(None, "train on the first N training images only")
    limit_test: int | None = setting(None, "validate and test on the first N images only")
    data_dir: str | None = setting(None, "where the datasets are (default: the packaged/cached location)")
    max_bad_batches: int = setting(10, "consecutive non-finite batches before training stops")
    checkpoint_every: int = setting(200, "steps between mid-epoch checkpoints (0: at the end of each epoch only)")
    warm_start: bool = setting(False, "start each sample's solve from its fixed point of the previous epoch")
    test_every_epoch: bool = setting(True, "test every epoch (else the last and the validation-selected one only)")
    precision: str = setting("fp32", "training autocast: fp32, bf16, fp16 (with a gradient scaler) or auto")
    eval_precision: str | None = setting(None, "evaluation's autocast precision (default: as in training)")
    compile: bool = setting(False, "torch.compile the embedding, the operator and the head (same state dict)")
    channels_last: bool = setting(True, "NHWC memory layout (about 25% faster convolutions on CPU, measured)")
    deterministic: bool = setting(False, "torch.use_deterministic_algorithms: bit-identical reruns and resumes")
    preempt_signals: tuple[str, ...] = setting(
        ("SIGTERM", "SIGUSR1"), "write last.pt and exit 75 on these signals (empty: off)"
    )
    dist_timeout_s: float = setting(300.0, "a collective waiting longer on a peer raises (torchrun then restarts)")

    def __post_init__(self) -> None:
        if isinstance(self.solve, Mapping):  # a TOML table or a dict: changes to the default training solve
            self.solve = TRAINING_SOLVE.replace(**solve_table(self.solve, "solve"))
        if not isinstance(self.solve, SolveOptions):
            raise JfbError(f"solve must be a table of solve options (a jfb.SolveOptions), got {self.solve!r}")
        if not isinstance(self.eval_solve, Mapping):
            raise JfbError(f"eval_solve must be a table of solve options, got {self.eval_solve!r}")
        self.eval_solve = solve_table(self.eval_solve, "eval_solve")
        self.validate()

    @property
    def architecture(self) -> str:
        return self.arch or self.dataset

    def validate(self) -> None:
        check_types(self, skip=("solve", "eval_solve"))
        checks = self._range_checks()
        if self.gamma is not None and not 0 < self.gamma <= 1:
            raise JfbError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.lipschitz_rescale and self.model != "implicit":
            raise JfbError("lipschitz_rescale needs model 'implicit' (it keeps the fixed-point operator contractive)")
        if self.depth_start is not None and not self.solve.fixed_depth:
            raise JfbError(
                'depth_start needs a fixed training depth, solve.tol = "none" (--tol none): it schedules that depth '
                "(--depth-start none turns the schedule off)"
            )
        if (self.jacobian_penalty or self.correction) and self.model != "implicit":
            raise JfbError("jacobian_penalty and correction need model 'implicit' (they regularise its fixed point)")
        if self.augment_rotation and not self.augment:
            raise JfbError("augment_rotation needs augment = true (it is part of the training augmentation)")
        if self.init not in INITS:
            raise unknown_name("init", self.init, INITS)
        if self.init != "zeros" and self.model != "implicit":
            raise JfbError("init needs model 'implicit' (it is where the fixed-point solve starts)")
        if self.warm_start and self.model != "implicit":
            raise JfbError("warm_start needs model 'implicit' (an explicit network has no fixed point to reuse)")
        check_ranges(self, checks)
        check_choices(
            self,
            [("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("device", DEVICES), ("latent_norm", LATENT_NORMS)],
        )
        self.evaluation_options(), get_backward(self.backward)
        signal_numbers(self.preempt_signals)
        check_precision(self.precision, self.device)
        check_precision(self.evaluation_precision, self.device)
        if self.depth_start is not None and not 1 <= self.depth_start <= self.solve.max_iter:
            raise JfbError(f"depth_start must be in [1, max_iter = {self.solve.max_iter}], got {self.depth_start!r}")
        if not self.dist_timeout_s > 0:
            raise JfbError(f"dist_timeout_s must be a number > 0, got {self.dist_timeout_s!r}")

    def _range_checks(self) -> list[tuple[bool, str, str]]:
        """``(holds, field, what is allowed)`` for every field with a range."""
        return [
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.jacobian_penalty >= 0, "jacobian_penalty", "a number >= 0"),
            (self.jacobian_probes >= 1, "jacobian_probes", "an integer >= 1"),
            (self.correction >= 0, "correction", "an integer >= 0"),
            (self.correction_weight > 0, "correction_weight", "a number > 0"),
            (self.init_weight > 0, "init_weight", "a number > 0"),
            (0 <= self.latent_dropout < 1, "latent_dropout", "in [0, 1)"),
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

    @property
    def evaluation_precision(self) -> str:
        return self.eval_precision or self.precision

    def augmentation(self) -> Augmentation | None:
        """The training augmentation: the dataset's, with ``augment_rotation``; None without ``augment``."""
        if not self.augment:
            return None
        return replace(dataset_info(self.dataset).augmentation, rotation=self.augment_rotation)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (what checkpoints keep): the solve as a table of its fields."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["solve"] = {f.name: getattr(self.solve, f.name) for f in fields(SolveOptions) if f.init}
        values["eval_solve"] = dict(self.eval_solve)
        return copy.deepcopy(values)

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """``name: old -> new`` for every option that differs from ``saved`` (a checkpoint's configuration) and
        changes the numbers: threads, checkpoint frequency and data location may differ, and options an older
        checkpoint lacks count as equal."""
        mine, theirs = flat_settings(self.to_dict()), flat_settings(migrate_legacy_keys(saved))
        keys = [*theirs, *(k for k in mine if k.startswith("eval_solve.") and k not in theirs)]  # unset: as training
        return [
            f"{key} {theirs.get(key)!r} -> {mine.get(key)!r}"
            for key in keys
            if key.split(".")[0] not in RUNTIME_OPTIONS and mine.get(key) != theirs.get(key)
        ]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """A configuration from a TOML file's or a checkpoint's values; unknown keys named with the closest one."""
        values = migrate_legacy_keys(values, warn_from=source if source.endswith(".toml") else None)
        values = {key: None if value == NONE and key in _NULLABLE else value for key, value in values.items()}
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                raise JfbError(f"{source}: unknown key {key!r}{_closest_key(key, known)}")
        return cls(**values)

    def training_options(self, epoch: int | None = None) -> SolveOptions:
        """The training solve (in epoch ``epoch``, counted from 0, at the depth the schedule gives)."""
        depth = self.training_depth(epoch)
        return self.solve if depth == self.solve.max_iter else self.solve.replace(max_iter=depth)

    def evaluation_options(self) -> SolveOptions:
        """The evaluation solve: the training solve with ``eval_solve``'s changes."""
        return self.solve.replace(**self.eval_solve) if self.eval_solve else self.solve

    def training_depth(self, epoch: int | None) -> int:
        """``max_iter``, or with ``depth_start`` the linear schedule from it to ``max_iter`` over the epochs."""
        max_iter = self.solve.max_iter
        if self.depth_start is None or epoch is None or self.epochs == 1:
            return max_iter
        return round(self.depth_start + (max_iter - self.depth_start) * epoch / (self.epochs - 1))

    def layer_options(self) -> dict[str, Any]:
        """What :class:`~jfb.ImplicitLayer` takes from this configuration."""
        return dict(
            backward=self.backward,
            options=self.training_options(),
            eval_options=self.evaluation_options(),
            jacobian_probes=self.jacobian_probes if self.jacobian_penalty else 0,
            correction=self.correction,
        )


def solve_table(table: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A TOML table (or flags) of SolveOptions fields as keywords: names checked, ``"none"`` read as None."""
    if isinstance(table, SolveOptions):
        return {f.name: getattr(table, f.name) for f in fields(SolveOptions) if f.init}
    for key in table:
        if key not in option_names():
            raise unknown_name(f"option of [{name}]", key, option_names())
    return {key: None if isinstance(value, str) and value.lower() == NONE else value for key, value in table.items()}


def _closest_key(key: str, known: list[str]) -> str:
    """``; did you mean 'lr'?``, or a solve option's table, or the valid keys."""
    close = difflib.get_close_matches(key, [*known, *option_names()], n=1)
    if not close:
        return f"; valid keys: {', '.join(known)}"
    if close[0] in known:
        return f"; did you mean {close[0]!r}?"
    return f"; did you mean {close[0]!r} in the [solve] table (or [eval_solve]; flags --{close[0].replace('_', '-')})?"


#: the fields a TOML file or a flag may clear with "none"
_NULLABLE = frozenset(f.name for f in fields(TrainConfig) if f.default is None)
