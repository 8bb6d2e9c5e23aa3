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

_OURS_TO_HF = [
    (r"^embed_tokens\.", "model.embed_tokens."),
    (r"^layers\.(\d+)\.attn\.", r"model.layers.\1.self_attn."),
    (r"^layers\.(\d+)\.mlp\.", r"model.layers.\1.mlp."),
    (r"^layers\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.mlp_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^layers\.(\d+)\.attn_out_norm\.", r"model.layers.\1.attn_output_layernorm."),
    (r"^layers\.(\d+)\.mlp_out_norm\.", r"model.layers.\1.mlp_output_layernorm."),
    (r"^norm\.", "model.norm."),
    (r"^lm_head\.", "lm_head."),
]
_HF_TO_OURS = [
    (r"^model\.embed_tokens\.", "embed_tokens."),
    (r"^model\.layers\.(\d+)\.self_attn\.", r"layers.\1.attn."),
    (r"^model\.layers\.(\d+)\.mlp\.", r"layers.\1.mlp."),
    (r"^model\.layers\.(\d+)\.input_layernorm\.", r"layers.\1.attn_norm."),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.", r"layers.\1.mlp_norm."),
    (r"^model\.layers\.(\d+)\.attn_output_layernorm\.", r"layers.\1.attn_out_norm."),
    (r"^model\.layers\.(\d+)\.mlp_output_layernorm\.", r"layers.\1.mlp_out_norm."),
    (r"^model\.norm\.", "norm."),
    (r"^lm_head\.", "lm_head."),
]


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
