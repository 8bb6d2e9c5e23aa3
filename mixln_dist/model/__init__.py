"""The Mix-LN LLaMA model: a pure nn.Module whose per-layer norm placement is fixed at construction."""

from .args import SCHEMES, LayerSpec, ModelConfig, ModelConfigError, NormConfig, layer_kinds, layer_plan, num_post_layers
from .flavors import FLAVORS
from .summary import summarize
from .transformer import Transformer, build_model, count_parameters, with_tied_head

__all__ = [
    "FLAVORS",
    "SCHEMES",
    "LayerSpec",
    "ModelConfig",
    "ModelConfigError",
    "NormConfig",
    "Transformer",
    "build_model",
    "count_parameters",
    "layer_kinds",
    "layer_plan",
    "num_post_layers",
    "summarize",
    "with_tied_head",
]
