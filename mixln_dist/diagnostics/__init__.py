"""The paper's depth diagnostics: per-layer gradient norms, angular distance between layers, layer removal.

Library functions take a model and token tensors; `launch/analyze.py` (cli.py) reads checkpoints and data,
writes CSVs, PNGs and JSON summaries, and compares runs in one markdown report (docs/diagnostics.md).
"""

from .angular import AngularDistances, angular_distances, sliding_windows
from .drop import LayerDrop, layer_removal_drop
from .grad_norms import GradNormProfile, grad_norm_profile
from .surgery import remove_layer

__all__ = [
    "AngularDistances",
    "GradNormProfile",
    "LayerDrop",
    "angular_distances",
    "grad_norm_profile",
    "layer_removal_drop",
    "remove_layer",
    "sliding_windows",
]
