"""The paper's depth diagnostics: per-layer gradient norms, angular distance between layers, layer removal.

Library functions take a model and token tensors; `launch/analyze.py` (cli.py) reads checkpoints and data,
writes CSVs, PNGs and JSON summaries, and compares runs in one markdown report (docs/diagnostics.md).
"""

from .angular import AngularDistances, angular_distances, sliding_windows
from .drop import LayerDrop, layer_removal_drop
from .grad_norms import GradNormProfile, engine_grad_norms, grad_norm_profile, grouped_norms, model_grad_norms
from .surgery import remove_layer

__all__ = [
    "AngularDistances",
    "GradNormProfile",
    "LayerDrop",
    "angular_distances",
    "engine_grad_norms",
    "grad_norm_profile",
    "grouped_norms",
    "layer_removal_drop",
    "model_grad_norms",
    "remove_layer",
    "sliding_windows",
]
