"""The paper's implicit networks (and explicit twins) built from shared blocks."""

from .architectures import ARCHITECTURES, Architecture, architecture
from .factory import MODEL_KINDS, build_model, build_parts
from .networks import ExplicitClassifier, ImplicitClassifier, Prediction, count_parameters

__all__ = [
    "ARCHITECTURES",
    "MODEL_KINDS",
    "Architecture",
    "ExplicitClassifier",
    "ImplicitClassifier",
    "Prediction",
    "architecture",
    "build_model",
    "build_parts",
    "count_parameters",
]
