"""The Mix-LN LLaMA model: a pure nn.Module whose per-layer norm placement is fixed at construction."""

from .args import SCHEMES, LayerSpec, ModelConfig, ModelConfigError, NormConfig, layer_kinds, layer_plan, num_post_layers
from .flavors import FLAVORS
from .transformer import Transformer, count_parameters

__all__ = [
    "FLAVORS",
    "SCHEMES",
    "LayerSpec",
    "ModelConfig",
    "ModelConfigError",
    "NormConfig",
    "Transformer",
    "count_parameters",
    "layer_kinds",
    "layer_plan",
    "num_post_layers",
]
