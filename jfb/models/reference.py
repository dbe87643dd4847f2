"""Convert the paper authors' published checkpoints (``*_FPN_*.pth``) to our parameter names.

The architecture is recognised from the keys (``mnist-reference``, or ``svhn-reference`` /
``cifar10-reference`` by the file name); the kind from the file name: the authors' explicit twins
have the implicit file's keys and shapes, and only ``Explicit`` in the name tells them apart
(evaluated as one application of T from u = 0, then S). Every key is renamed by an explicit table and
checked against the model we build (strict: no missing, unexpected or mis-shaped tensor). The
SVHN / CIFAR-10 files hold two BatchNorm layers (``bn_1``, ``bn_2``) that their network never
used (``num_batches_tracked == 0``); they are dropped after checking exactly that.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

from torch import Tensor

from ..errors import JfbError
from ..safe_load import load_tensors_only
from .factory import build_model

_MNIST_RULES = [
    (r"^conv_d1\.", "embedding.stages.0.0."),
    (r"^bn_1\.", "embedding.stages.0.1."),
    (r"^conv_d2\.", "embedding.stages.1.0."),
    (r"^bn_2\.", "embedding.stages.1.1."),
]
_RESNET_RULES = [
    (r"^conv1\.", "embedding.stem.0."),
    (r"^bn1\.", "embedding.stem.1."),
    (r"^layer(\d)\.0\.conv_d1\.", lambda m: f"embedding.stages.{int(m.group(1)) - 1}.conv1."),
    (r"^layer(\d)\.0\.conv_d2\.", lambda m: f"embedding.stages.{int(m.group(1)) - 1}.conv2."),
    (r"^layer(\d)\.0\.bn(\d)\.", lambda m: f"embedding.stages.{int(m.group(1)) - 1}.bn{m.group(2)}."),
]
_SHARED_RULES = [
    (r"^latent_convs\.(\d+)\.0\.", r"implicit.operator.blocks.\1.conv1."),
    (r"^latent_convs\.(\d+)\.3\.", r"implicit.operator.blocks.\1.conv2."),
    (r"^lat_batch_norm\.(\d+)\.", r"implicit.operator.norms.\1."),
    (r"^conv_y\.", "head.conv."),
    (r"^fc_y\.", "head.fc."),
]
_UNUSED_IN_RESNET = ("bn_1.", "bn_2.")


def recognise(keys: list[str], hint: str = "") -> str:
    """Architecture name of a reference state dict (``hint``: file name, to tell SVHN from CIFAR-10)."""
    if "conv_d1.weight" in keys:
        return "mnist-reference"
    if "layer1.0.conv_d1.weight" in keys:
        if "cifar" in hint.lower():
            return "cifar10-reference"
        if "svhn" in hint.lower():
            return "svhn-reference"
        raise JfbError(
            "SVHN and CIFAR-10 reference checkpoints share one architecture; pass the dataset (svhn or cifar10)"
        )
    raise JfbError(f"not a recognised reference checkpoint (first keys: {keys[:4]})")


def _rename(key: str, rules: list) -> str | None:
    for pattern, replacement in rules:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    return None


def convert_state_dict(reference: dict[str, Tensor], arch: str) -> dict[str, Tensor]:
    rules = (_MNIST_RULES if arch == "mnist-reference" else _RESNET_RULES) + _SHARED_RULES
    converted = {}
    for key, value in reference.items():
        if arch != "mnist-reference" and key.startswith(_UNUSED_IN_RESNET):
            if key.endswith("num_batches_tracked") and int(value) != 0:
                raise JfbError(f"{key} = {int(value)}: this BatchNorm was used, the conversion table is wrong")
            continue
        new_key = _rename(key, rules)
        if new_key is None:
            raise JfbError(f"reference key {key!r} has no counterpart in architecture {arch!r}")
        converted[new_key] = value
    return converted


def load_reference(path: str | Path, dataset: str | None = None) -> tuple[str, dict[str, Tensor], dict]:
    """``(architecture, our state dict, info)`` from a published checkpoint, without running its pickled code."""
    path = Path(path)
    content = load_tensors_only(path)
    if not isinstance(content, dict) or "net_state_dict" not in content:
        raise JfbError(f"{path}: not a published JFB checkpoint (no 'net_state_dict')")
    reference = content["net_state_dict"]
    if type(reference) not in (dict, OrderedDict) or not all(isinstance(v, Tensor) for v in reference.values()):
        raise JfbError(f"{path}: 'net_state_dict' is not a plain dict of tensors ({type(reference).__name__})")
    try:
        arch = recognise(list(reference), dataset or path.name)
    except JfbError as exc:
        raise JfbError(f"{path}: {exc}") from exc
    state = convert_state_dict(reference, arch)
    model_keys = build_model(arch).state_dict()
    missing = sorted(set(model_keys) - set(state))
    unexpected = sorted(set(state) - set(model_keys))
    wrong = [k for k in state if k in model_keys and state[k].shape != model_keys[k].shape]
    if missing or unexpected or wrong:
        raise JfbError(
            f"{path}: keys do not match {arch!r}: missing {missing}, unexpected {unexpected}, wrong shapes {wrong}"
        )
    accuracy = content.get("test_acc_hist") or []
    return (
        arch,
        state,
        {
            "source": str(path),
            "reported_test_accuracy": accuracy[-1] if accuracy else None,
            "kind": "explicit" if "explicit" in path.name.lower() else "implicit",
        },
    )


def as_explicit(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The converted state dict for the explicit twin (:class:`~jfb.models.ExplicitClassifier` keys)."""
    return {key.replace("implicit.operator.", "operator.", 1): value for key, value in state.items()}


#: the dataset each reference architecture was trained on
REFERENCE_DATASETS = {"mnist-reference": "mnist", "svhn-reference": "svhn", "cifar10-reference": "cifar10"}
