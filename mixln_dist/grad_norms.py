"""Per-layer gradient norms, grouped as the paper plots them: the L2 norm over all parameters of each decoder
layer, also split into its attention (QK/QKV norms inside it included), MLP and norm parameters (GPAS gates
counted with the norms: both are gains of the residual stream), plus the embedding (with its norm, where there
is one), the final norm and the head.

Used during training (`train.diag_interval`: `engine_grad_norms` reads a DeepSpeed engine's full gradients
under ZeRO 0-3 through DeepSpeed's own accessor, `safe_get_full_grad`; under ZeRO-2/3 `param.grad` is None on
most ranks, and under ZeRO-3 the accessor is a collective, so every rank must call it, in the same order, after
backward and before step) and after it (`mixln_dist.diagnostics.grad_norms`: plain backward passes of a loaded
checkpoint).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Dict, Iterable, Optional, Tuple

import torch

_LAYER = re.compile(r"^layers\.(\d+)\.(attn|mlp)\.")
_LAYER_NORM = re.compile(r"^layers\.(\d+)\.(\w*norm\w*|gpas)\.")
_TOP = {"embed_tokens.weight": "embed", "embed_norm.weight": "embed", "norm.weight": "final_norm",
        "lm_head.weight": "head"}


def group_of(name: str) -> Tuple[str, Optional[int]]:
    """Parameter name -> (group, layer index or None): ("attn", 3), ("mlp", 3), ("norm", 3), ("embed", None)..."""
    if name in _TOP:
        return _TOP[name], None
    m = _LAYER.match(name)
    if m:
        return m.group(2), int(m.group(1))
    m = _LAYER_NORM.match(name)
    if m:
        return "norm", int(m.group(1))
    raise KeyError(f"parameter '{name}' belongs to no known group")


def grouped_norms(named_grads: Iterable[Tuple[str, Optional[torch.Tensor]]]) -> Dict[str, float]:
    """{"layer3": ..., "layer3.attn": ..., "layer3.mlp": ..., "layer3.norm": ..., "embed": ..., "head": ...,
    "final_norm": ..., "total": ...} from (name, gradient) pairs; a missing gradient counts as zero."""
    keys, sums = [], []  # the squared norms stay on the device; one transfer at the end, not one per tensor
    for name, grad in named_grads:
        group, layer = group_of(name)
        keys.append([group] if layer is None else [f"layer{layer}.{group}", f"layer{layer}"])
        sums.append(None if grad is None else grad.detach().double().pow(2).sum())
    present = [s for s in sums if s is not None]
    values = iter(torch.stack(present).tolist() if present else [])
    squares: Dict[str, float] = defaultdict(float)
    for names, s in zip(keys, sums):
        sq = 0.0 if s is None else next(values)
        for key in (*names, "total"):
            squares[key] += sq
    return {k: math.sqrt(v) for k, v in squares.items()}


def model_grad_norms(model: torch.nn.Module) -> Dict[str, float]:
    """The same, for a plain (not DeepSpeed) model after backward."""
    return grouped_norms((n, p.grad) for n, p in model.named_parameters())


def engine_grad_norms(engine) -> Dict[str, float]:
    """Collective under ZeRO-3: call on every rank after backward of the last micro-batch, before step."""
    from deepspeed.utils import safe_get_full_grad

    return grouped_norms((n, safe_get_full_grad(p)) for n, p in engine.module.named_parameters())
