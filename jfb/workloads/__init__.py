"""Workloads beyond MNIST, each a DEQ of the kind researchers train: ``jfb train NAME`` and ``jfb bench zoo``.

- ``prefix-sums``: algorithmic reasoning with test-time compute (:mod:`jfb.workloads.prefix_sums`).
- ``chains``: an implicit graph network on long-range dependencies (:mod:`jfb.workloads.chains`).
- ``lm``: a byte-level DEQ transformer language model (:mod:`jfb.workloads.language`).
- ``state-tracking``: running products of permutations, S5 by default (:mod:`jfb.workloads.state_tracking`).
- ``mazes``: the path through a perfect maze, trained small, tested 3x larger (:mod:`jfb.workloads.mazes`).
- ``sudoku``: 9x9 puzzles, a relational DEQ over the cells, scored by whole boards (:mod:`jfb.workloads.sudoku`).
"""

from __future__ import annotations

from ..errors import unknown_name
from .base import Workload
from .chains import WORKLOAD as CHAINS
from .language import WORKLOAD as LANGUAGE_MODEL
from .mazes import WORKLOAD as MAZES
from .prefix_sums import WORKLOAD as PREFIX_SUMS
from .state_tracking import WORKLOAD as STATE_TRACKING
from .sudoku import WORKLOAD as SUDOKU

WORKLOADS: dict[str, Workload] = {
    w.name: w for w in (PREFIX_SUMS, CHAINS, LANGUAGE_MODEL, STATE_TRACKING, MAZES, SUDOKU)
}


def get_workload(name: str) -> Workload:
    if name not in WORKLOADS:
        raise unknown_name("workload", name, WORKLOADS)
    return WORKLOADS[name]


__all__ = ["WORKLOADS", "Workload", "get_workload"]
