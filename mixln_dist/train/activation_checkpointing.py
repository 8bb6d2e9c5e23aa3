"""Activation checkpointing, applied to a built model from outside: the model file never mentions it.

Each chosen block's forward is wrapped in torch's non-reentrant checkpoint. Wrapping the instance's forward
(rather than the module in a wrapper module) keeps parameter names unchanged, so checkpoints, ZeRO's
parameter names and the per-layer diagnostics are the same with checkpointing on or off.

Under ZeRO-3 the recomputation re-enters the submodules, whose forward hooks gather the partitioned
parameters again; tests/train/test_distributed.py (test_activation_checkpointing_under_zero3_is_exact) proves
losses and gradients are unchanged.
"""

from __future__ import annotations

from typing import List

from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpointed_layers(n_layers: int, mode: str, every_k: int) -> List[int]:
    if mode == "none":
        return []
    if mode == "full":
        return list(range(n_layers))
    if mode == "every_k":
        return list(range(0, n_layers, every_k))
    raise ValueError(f"train.activation_checkpointing={mode!r} is not one of none, full, every_k")


def apply_activation_checkpointing(model: nn.Module, mode: str, every_k: int = 2) -> List[int]:
    """Recompute the chosen decoder layers in backward instead of storing their activations."""
    chosen = checkpointed_layers(len(model.layers), mode, every_k)
    for i in chosen:
        layer = model.layers[i]
        inner = layer.forward

        def forward(*args, _inner=inner):
            return checkpoint(_inner, *args, use_reentrant=False)

        layer.forward = forward  # an instance attribute: nn.Module.__call__ finds it before the class method
    return chosen
