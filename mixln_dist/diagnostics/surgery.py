"""Layer surgery: a model with one decoder layer gone, for the paper's performance-drop measurement.

The pruned model is a real (L-1)-layer Transformer: `cfg.n_layers` is L-1 and `norm_cfg.layer_kinds` lists the
kinds of the layers that remain, so it is indistinguishable from one built that way (the equality is tested).
Each remaining block keeps its own LayerSpec: removing layer 3 does not renumber the LayerNorm Scaling factor
1/sqrt(l) of the layers after it, nor change DeepNorm's residual scale (2L)^(1/4). Those constants are not
expressible in the config, which is why the blocks are carried over rather than rebuilt.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..model import POST_KINDS, Transformer


def remove_layer(model: Transformer, index: int) -> Transformer:
    """A new Transformer without layer `index` (0-based; negative counts from the end).

    The new model *shares* its modules with `model` (no weights are copied, so sweeping all L layers of a 7B
    model costs no memory); `model` itself is left intact. Deep-copy the result before training either one.
    """
    n = len(model.layers)
    if n < 2:
        raise ValueError(f"cannot remove a layer from a {n}-layer model: at least one layer must remain")
    if not -n <= index < n:
        raise IndexError(f"layer {index} does not exist; the model has layers 0..{n - 1}")
    index %= n
    kept = [block for i, block in enumerate(model.layers) if i != index]
    kinds = [block.spec.kind for block in kept]
    cfg = dataclasses.replace(model.cfg, n_layers=n - 1)
    norm = dataclasses.replace(
        model.norm_cfg,
        layer_kinds=kinds,
        # scaled_init only concerns initialisation (the blocks arrive initialised); keep it unless the remaining
        # stack is all Post-LN, where the config would reject it.
        scaled_init=model.norm_cfg.scaled_init and not all(k in POST_KINDS for k in kinds),
    )
    with torch.device("meta"):  # the shell only: every module below is replaced by one of `model`'s
        pruned = Transformer(cfg, norm)
    pruned.embed_tokens = model.embed_tokens
    pruned.embed_norm = model.embed_norm
    pruned.layers = nn.ModuleList(kept)
    pruned.norm = model.norm
    pruned.lm_head = model.lm_head  # the same module, so a tied head stays tied
    pruned.rope_cos, pruned.rope_sin = model.rope_cos, model.rope_sin
    pruned.plan = [block.spec for block in kept]
    return pruned.train(model.training)
