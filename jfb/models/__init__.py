"""The paper's implicit networks (and explicit twins) built from shared blocks."""
from .configs import ARCHITECTURES, MODEL_KINDS, Architecture, architecture, build_model, build_parts
from .networks import ExplicitClassifier, ImplicitClassifier, count_parameters

__all__ = [
    "ARCHITECTURES",
    "MODEL_KINDS",
    "Architecture",
    "ExplicitClassifier",
    "ImplicitClassifier",
    "architecture",
    "build_model",
    "build_parts",
    "count_parameters",
]
