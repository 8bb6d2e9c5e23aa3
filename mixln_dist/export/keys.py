"""State-dict key mapping between our Transformer and Hugging Face's LlamaForCausalLM (and the exported
MixLNForCausalLM, which keeps Llama's names).

Our blocks name their two norms `attn_norm` and `mlp_norm` whatever their placement; in a Pre-LN layer these
are HF Llama's `input_layernorm` and `post_attention_layernorm`. A Sandwich-LN layer's two extra norms, on the
sublayer outputs, become `attn_output_layernorm` and `mlp_output_layernorm`. Attention's q/k/v norms keep their
names under `self_attn.` (as in transformers' OLMo 2 and Qwen 3), the GPAS gate is `gpas.gate`.

The official Mix-LN code's layout names a layer's norms by its kind instead (OFFICIAL_NORMS): a Post-LN layer's
are `post_attention_layernorm` (after the attention add) and `post_feedforward_layernorm` (after the MLP add).
`to_official`/`from_official` convert to and from it; the layer kinds decide each name, and are read back from
which names a layer has.
"""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

import torch

# (ours, Hugging Face) name prefixes; "{i}" stands for the layer index. Both directions are built from this one list.
_PREFIXES = [
    ("embed_tokens.", "model.embed_tokens."),
    ("embed_norm.", "model.embed_norm."),
    ("layers.{i}.attn.", "model.layers.{i}.self_attn."),
    ("layers.{i}.mlp.", "model.layers.{i}.mlp."),
    ("layers.{i}.attn_norm.", "model.layers.{i}.input_layernorm."),
    ("layers.{i}.mlp_norm.", "model.layers.{i}.post_attention_layernorm."),
    ("layers.{i}.attn_out_norm.", "model.layers.{i}.attn_output_layernorm."),
    ("layers.{i}.mlp_out_norm.", "model.layers.{i}.mlp_output_layernorm."),
    ("layers.{i}.gpas.", "model.layers.{i}.gpas."),
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


# The official code (pixeli99/MixLN, peft_pretraining/modeling_llama.py) per layer kind: our name -> its name.
OFFICIAL_NORMS = {
    "pre": {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"},
    "post": {"attn_norm": "post_attention_layernorm", "mlp_norm": "post_feedforward_layernorm"},
    "sandwich": {"attn_norm": "input_layernorm", "attn_out_norm": "post_attention_layernorm",
                 "mlp_norm": "pre_feedforward_layernorm", "mlp_out_norm": "post_feedforward_layernorm"},
}
_OUR_NORM = re.compile(r"^layers\.(\d+)\.(attn_norm|mlp_norm|attn_out_norm|mlp_out_norm)\.(.+)$")
_THEIR_NORM = re.compile(r"^model\.layers\.(\d+)\.(\w+_layernorm)\.(.+)$")
_ANY_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def is_official_layout(hf_state: Dict[str, torch.Tensor]) -> bool:
    """Names only the official code writes: its Post-LN and Sandwich-LN layers' feed-forward norms."""
    return any(k.endswith(("post_feedforward_layernorm.weight", "pre_feedforward_layernorm.weight")) for k in hf_state)


def to_official(state_dict: Dict[str, torch.Tensor], kinds: List[str]) -> Dict[str, torch.Tensor]:
    """Our state dict -> the official code's names, for a model whose layers have `kinds` (keys of OFFICIAL_NORMS)."""
    out = {}
    for key, value in state_dict.items():
        m = _OUR_NORM.match(key)
        if m:
            layer = int(m.group(1))
            out[f"model.layers.{layer}.{OFFICIAL_NORMS[kinds[layer]][m.group(2)]}.{m.group(3)}"] = value
        else:
            out[_rename(key, _OURS_TO_HF)] = value
    return out


def from_official(hf_state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The official code's state dict -> (ours, the kind of each layer, read from the norms the layer has)."""
    norms: Dict[int, Dict[str, str]] = {}  # layer -> {their norm name: the key's tail}
    for key in hf_state:
        m = _THEIR_NORM.match(key)
        if m:
            norms.setdefault(int(m.group(1)), {})[m.group(2)] = m.group(3)
    n_layers = 1 + max((int(m.group(1)) for m in map(_ANY_LAYER.match, hf_state) if m), default=-1)
    by_names = {frozenset(names.values()): kind for kind, names in OFFICIAL_NORMS.items()}
    kinds = []
    for layer in range(n_layers):
        kind = by_names.get(frozenset(norms.get(layer, {})))
        if kind is None:
            raise KeyError(f"layer {layer} has the norms {sorted(norms.get(layer, {}))}, which no layer of the "
                           f"official Mix-LN code has (its layouts: {sorted(map(sorted, by_names))})")
        kinds.append(kind)
    theirs_to_ours = [{theirs: ours for ours, theirs in OFFICIAL_NORMS[kind].items()} for kind in kinds]
    state = {}
    for key, value in hf_state.items():
        m = _THEIR_NORM.match(key)
        if m:
            layer = int(m.group(1))
            state[f"layers.{layer}.{theirs_to_ours[layer][m.group(2)]}.{m.group(3)}"] = value
        elif not key.endswith("rotary_emb.inv_freq"):
            state[_rename(key, _HF_TO_OURS)] = value
    return state, kinds
