"""Backward modes: how the gradient of a fixed point is computed.

Names: ``jfb``, ``neumann:K``, ``ift`` (CG on the normal equations), ``ift:cg``,
``ift:fixed_point``, ``ift:gmres``, ``unroll``.
"""
from __future__ import annotations

from typing import Union

from .base import BackwardMode, BackwardStats
from .ift import IFT
from .jfb import JFB
from .linear import LINEAR_SOLVERS
from .neumann import Neumann
from .unroll import Unroll

BACKWARD_NAMES = ("jfb", "neumann:K", "ift", *(f"ift:{s}" for s in LINEAR_SOLVERS), "unroll")


def get_backward(spec: Union[str, BackwardMode]) -> BackwardMode:
    """Parse a backward-mode name (or pass a BackwardMode through)."""
    if isinstance(spec, BackwardMode):
        return spec
    name, _, arg = str(spec).partition(":")
    if name == "jfb" and not arg:
        return JFB()
    if name == "unroll" and not arg:
        return Unroll()
    if name == "neumann" and arg.isdigit():
        return Neumann(int(arg))
    if name == "ift" and (not arg or arg in LINEAR_SOLVERS):
        return IFT(arg or "cg")
    raise ValueError(f"unknown backward mode {spec!r}; choose one of {', '.join(BACKWARD_NAMES)} (K an integer >= 0)")


__all__ = ["BACKWARD_NAMES", "BackwardMode", "BackwardStats", "IFT", "JFB", "Neumann", "Unroll", "get_backward"]
