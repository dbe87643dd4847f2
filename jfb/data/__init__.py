"""Datasets held in memory as uint8 tensors, with a deterministic validation split, and their batches.

``load_splits(name)`` returns train / validation / test :class:`Split` objects (:mod:`.datasets`);
:func:`batches` normalises and augments them on the fly (:mod:`.batches`). The test split is never
augmented.
"""

from .batches import Normalizer, augment_batch, batches, steps_per_pass
from .datasets import DATASETS, Augmentation, DatasetInfo, Split, dataset_info, load_splits

__all__ = [
    "DATASETS",
    "Augmentation",
    "DatasetInfo",
    "Normalizer",
    "Split",
    "augment_batch",
    "batches",
    "dataset_info",
    "load_splits",
    "steps_per_pass",
]
