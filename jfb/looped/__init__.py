"""Around the solve of a looped reasoner: deep supervision over segments (:func:`segments`), halting per sample
(:func:`halted_solve`, :class:`HaltingHead`), several starts at once (:func:`multi_start`) and the
path-independence diagnostic (:func:`path_independence`), for any :class:`~jfb.ImplicitLayer` or operator
``T(u, x)``."""

from __future__ import annotations

from .halting import Halted, HaltingHead, halted_solve, halting_loss
from .multistart import MultiStart, multi_start
from .path import OTHER_SAMPLE, PathIndependence, path_independence
from .supervision import segments

__all__ = [
    "OTHER_SAMPLE",
    "Halted",
    "HaltingHead",
    "MultiStart",
    "PathIndependence",
    "halted_solve",
    "halting_loss",
    "multi_start",
    "path_independence",
    "segments",
]
