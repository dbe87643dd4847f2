"""Around the solve of a looped reasoner: deep supervision over segments (:func:`segments`), several starts at once
(:func:`multi_start`) and the path-independence diagnostic (:func:`path_independence`), for any
:class:`~jfb.ImplicitLayer` or operator ``T(u, x)``."""

from __future__ import annotations

from .multistart import MultiStart, multi_start
from .path import OTHER_SAMPLE, PathIndependence, path_independence
from .supervision import segments

__all__ = ["OTHER_SAMPLE", "MultiStart", "PathIndependence", "multi_start", "path_independence", "segments"]
