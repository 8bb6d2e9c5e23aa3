"""`train.init_from`: start a run from existing weights instead of a random initialisation.

The source is a Hugging Face folder (a stock Llama, or one of our exports) or one of our checkpoints (a run
directory or a `checkpoints/step_N` folder, any ZeRO stage). Its shape must equal the run's model; its norm
placement need not: weights keep their names whatever the placement, so a Pre-LN Llama can seed a Mix-LN run.
Only weights are taken; the optimizer, schedule and data order start fresh.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..model import SCHEME_EXTRAS, ModelConfig
from ..pretrained import load_pretrained

SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "kv_heads", "ffn_dim", "vocab_size", "tie_embeddings")


def read_weights(path: str, model_cfg: ModelConfig) -> Dict[str, torch.Tensor]:
    """The fp32 weights at `path`, checked against the run's model shape."""
    source = load_pretrained(path).model
    differences = [f"model.{f}: {getattr(source.cfg, f)} there, {getattr(model_cfg, f)} here"
                   for f in SHAPE_FIELDS if getattr(source.cfg, f) != getattr(model_cfg, f)]
    if differences:
        raise CheckpointError(
            f"train.init_from={path} has another model shape ({'; '.join(differences)}); set the run's model "
            "to the source's shape"
        )
    return source.state_dict()


def load_weights(model: nn.Module, state: Dict[str, torch.Tensor], zero3: bool, is_main: bool) -> None:
    """Copy `state` into the (already initialised) model; under ZeRO-3 one gathered parameter at a time."""
    names = [n for n, _ in model.named_parameters()]
    # Norms and gates only some schemes have (Sandwich-LN's output norms, QK-norms, GPAS gates...): a source
    # without them leaves them at their initial 1 (or 0).
    missing = [n for n in names if n not in state and not n.endswith(SCHEME_EXTRAS)]
    unexpected = sorted(set(state) - set(names) - {"lm_head.weight"})  # a tied head is the embedding
    if missing or unexpected:
        raise CheckpointError(
            f"train.init_from does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    import deepspeed

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name not in state:
                continue
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=zero3):
                if is_main or not zero3:
                    param.copy_(state[name].to(param.dtype))
