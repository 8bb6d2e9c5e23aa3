"""State-dict key mapping between our Transformer and Hugging Face's LlamaForCausalLM (and the exported
MixLNForCausalLM, which keeps Llama's names).

Our blocks name their two norms `attn_norm` and `mlp_norm` whatever their placement; in a Pre-LN layer these
are HF Llama's `input_layernorm` and `post_attention_layernorm`. A Sandwich-LN layer's two extra norms, on the
sublayer outputs, become `attn_output_layernorm` and `mlp_output_layernorm`.
"""

from __future__ import annotations

import re
from typing import Dict

import torch

# (ours, Hugging Face) name prefixes; "{i}" stands for the layer index. Both directions are built from this one list.
_PREFIXES = [
    ("embed_tokens.", "model.embed_tokens."),
    ("layers.{i}.attn.", "model.layers.{i}.self_attn."),
    ("layers.{i}.mlp.", "model.layers.{i}.mlp."),
    ("layers.{i}.attn_norm.", "model.layers.{i}.input_layernorm."),
    ("layers.{i}.mlp_norm.", "model.layers.{i}.post_attention_layernorm."),
    ("layers.{i}.attn_out_norm.", "model.layers.{i}.attn_output_layernorm."),
    ("layers.{i}.mlp_out_norm.", "model.layers.{i}.mlp_output_layernorm."),
    ("norm.", "model.norm."),
    ("lm_head.", "lm_head."),
]


def _table(pairs):
    return [("^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)"), dst.replace("{i}", r"\1")) for src, dst in pairs]


_OURS_TO_HF = _table(_PREFIXES)
_HF_TO_OURS = _table([(hf, ours) for ours, hf in _PREFIXES])


def _rename(key: str, table) -> str:
    for pattern, replacement in table:
        new, n = re.subn(pattern, replacement, key)
        if n:
            return new
    raise KeyError(f"no mapping for state-dict key '{key}'")


def to_hf_llama(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {_rename(k, _OURS_TO_HF): v for k, v in state_dict.items()}


def from_hf_llama(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # Older HF checkpoints carry a rotary inv_freq buffer per layer; ours is derived, never stored.
    return {_rename(k, _HF_TO_OURS): v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
