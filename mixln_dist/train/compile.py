"""torch.compile, applied to a built model from outside, one decoder block at a time (train.compile=true).

Each block's forward is replaced by its compiled version, as activation checkpointing wraps it, so parameter
names, checkpoints and the per-layer diagnostics are unchanged. Blocks of one kind share their code, so dynamo
compiles each kind once and reuses the graph for every layer (the parameters are graph inputs). The embedding and
the chunked loss (model/loss.py: a Python loop over chunks) stay eager. Applied before activation checkpointing,
so a checkpointed block recomputes through the compiled forward.

Under ZeRO-3 every linear layer gathers its partitioned weight in module hooks, inside the block: a compiled
block would have to trace DeepSpeed's communication, so there DeepSpeed's own engine.compile() is used instead.
"""

from __future__ import annotations

import torch
from torch import nn


def apply_compile(model: nn.Module) -> int:
    """Compile every decoder layer's forward in place; returns how many were compiled."""
    for layer in model.layers:
        layer.forward = torch.compile(layer.forward)  # an instance attribute, found before the class method
    return len(model.layers)
