"""The Mix-LN LLaMA model: a pure nn.Module whose per-layer norm placement is fixed at construction."""

from .args import (LAYER_KINDS, POST_KINDS, QKV_NORMS, SCHEMES, LayerSpec, ModelConfig, ModelConfigError, NormConfig,
                   embed_norm_on, layer_kinds, layer_plan, num_post_layers)
from .flavors import FLAVORS
from .summary import summarize
from .transformer import SCHEME_EXTRAS, Transformer, build_model, count_parameters, scheme_extras, with_tied_head

__all__ = [
    "FLAVORS",
    "LAYER_KINDS",
    "POST_KINDS",
    "QKV_NORMS",
    "SCHEMES",
    "SCHEME_EXTRAS",
    "LayerSpec",
    "ModelConfig",
    "ModelConfigError",
    "NormConfig",
    "Transformer",
    "build_model",
    "count_parameters",
    "embed_norm_on",
    "layer_kinds",
    "layer_plan",
    "num_post_layers",
    "scheme_extras",
    "summarize",
    "with_tied_head",
]
