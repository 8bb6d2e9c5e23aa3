"""The official Mix-LN code's layout: folders its `LlamaForCausalLM` (pixeli99/MixLN,
peft_pretraining/modeling_llama.py, on transformers 4.31) saves and loads.

That code picks the placement from environment variables (`NORM_TYPE`, `POST_NUM`), not from config.json, and
names a layer's norms by its kind (keys.OFFICIAL_NORMS): a Post-LN layer's are `post_attention_layernorm` and
`post_feedforward_layernorm`, where our own export (Llama's names by role) writes `input_layernorm` and
`post_attention_layernorm`. An import reads the kinds back from the names each layer has; an export writes a stock
Llama config.json (plus `norm_type`/`post_num`, which tell people what to set NORM_TYPE and POST_NUM to) and the
weights under the official names, with the per-layer rotary `inv_freq` buffers that code keeps in its state dict.

It computes Pre-LN, Post-LN, Mix-LN (post_pre) and Sandwich-LN layers with multi-head attention and RoPE base
10000; anything else is refused by name. tests/export/official_fixture holds weights and logits made by the
official code itself, and the proof that both directions match it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import ExportError
from ..model import ModelConfig, NormConfig, embed_norm_on, layer_plan
from .hf_config import SpecialTokens
from .keys import to_official

OFFICIAL = "official"
ROPE_BASE = 10000.0  # hard-coded in the official LlamaRotaryEmbedding


def norm_type(model: ModelConfig, norm: NormConfig) -> Tuple[str, Optional[int]]:
    """The official code's (NORM_TYPE, POST_NUM) computing this model, or ExportError naming why none does."""
    plan = layer_plan(model, norm)
    unsupported = [(norm.gpas, "GPAS gates (norm.gpas)"), (embed_norm_on(norm), "embedding norm (norm.embed_norm)"),
                   (any(s.qkv_norm != "none" for s in plan), "QK/QKV-norm (norm.qk_norm, norm=hybrid)"),
                   (model.kv_heads != model.n_heads, f"grouped-query attention (model.n_kv_heads={model.n_kv_heads})"),
                   (model.rope_theta != ROPE_BASE, f"RoPE base but 10000 (model.rope_theta={model.rope_theta:g})")]
    for present, what in unsupported:
        if present:
            raise ExportError(f"the official Mix-LN code has no {what}; export this model in our layout "
                                      "(--layout mixln)")
    kinds = [s.kind for s in plan]
    n_post = next((i for i, k in enumerate(kinds) if k != "post"), len(kinds))
    if set(kinds) == {"sandwich"}:
        return "sandwich", None
    if n_post == len(kinds):
        return "post", None
    if kinds == ["post"] * n_post + ["pre"] * (len(kinds) - n_post):
        return ("post_pre", n_post) if n_post else ("pre", None)
    raise ExportError(
        f"the official Mix-LN code cannot compute the layer kinds {kinds} (norm.scheme={norm.scheme}): it has Pre-LN, "
        "Post-LN, Post-LN-then-Pre-LN and Sandwich-LN stacks only (its deeppost hard-codes the residual scale of a "
        "32-layer model); export this model in our layout (--layout mixln)")


def norm_from_kinds(kinds: List[str]) -> NormConfig:
    """The NormConfig of an official checkpoint whose layers have `kinds`."""
    n_post = next((i for i, k in enumerate(kinds) if k != "post"), len(kinds))
    if len(set(kinds)) == 1:
        return NormConfig(scheme=kinds[0])
    if kinds == ["post"] * n_post + ["pre"] * (len(kinds) - n_post):
        return NormConfig(scheme="mix", post_layers=n_post)
    return NormConfig(scheme="mix", layer_kinds=list(kinds))  # its pre_post/mono layouts: kept explicitly


def config_fields(model: ModelConfig, norm: NormConfig, special: SpecialTokens, dtype: torch.dtype) -> dict:
    """config.json for transformers 4.31's LlamaConfig (the official code's), plus the env settings it needs."""
    kind, post_num = norm_type(model, norm)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": model.dim, "intermediate_size": model.ffn_dim, "num_hidden_layers": model.n_layers,
        "num_attention_heads": model.n_heads, "num_key_value_heads": model.n_heads,
        "max_position_embeddings": model.max_seq_len, "rms_norm_eps": model.norm_eps, "vocab_size": model.vocab_size,
        "tie_word_embeddings": model.tie_embeddings, "initializer_range": model.init_std, "pretraining_tp": 1,
        "bos_token_id": special.bos, "eos_token_id": special.eos, "pad_token_id": special.pad, "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        # Not read by the official code, which takes them from the environment: NORM_TYPE=... POST_NUM=...
        "norm_type": kind, **({"post_num": post_num} if post_num is not None else {}),
    }


def official_state(state_dict: Dict[str, torch.Tensor], model: ModelConfig, norm: NormConfig,
                   dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """Our weights under the official names, with the rotary inv_freq buffer each of its layers saves (fp32)."""
    kinds = [s.kind for s in layer_plan(model, norm)]
    state = {k: v.detach().to(dtype).contiguous() for k, v in to_official(state_dict, kinds).items()}
    if model.tie_embeddings:
        state.pop("lm_head.weight", None)  # saved once, as the embedding, as transformers does
    hd = model.head_dim
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, hd, 2).float() / hd))  # the official expression
    for i in range(model.n_layers):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    return state


def write(folder: Path, state_dict: Dict[str, torch.Tensor], model: ModelConfig, norm: NormConfig,
          special: SpecialTokens, dtype: torch.dtype, shard_size: str) -> None:
    from huggingface_hub import save_torch_state_dict  # transformers' own dependency

    fields = config_fields(model, norm, special, dtype)
    save_torch_state_dict(official_state(state_dict, model, norm, dtype), folder, max_shard_size=shard_size)
    (folder / "config.json").write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
