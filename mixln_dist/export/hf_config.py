"""Our model and norm settings <-> the fields of a Hugging Face `config.json`. Pure: imports no transformers.

A model whose every layer is plain Pre-LN is a stock LlamaForCausalLM (`model_type: llama`). Any other model is a
`mixln_llama` model: Llama's fields plus the explicit per-layer plan (`layer_kinds`, `residual_scales`,
`norm_scales`, `qkv_norms`) and the model-wide switches (`gpas`, `embed_norm`), so the exported modeling code
derives nothing from the scheme name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..errors import ExportError
from ..model import ModelConfig, ModelConfigError, NormConfig, embed_norm_on, layer_kinds, layer_plan

LLAMA = "llama"
MIXLN = "mixln_llama"


class HFConfigError(ExportError):
    """A Hugging Face configuration that our model cannot represent; the message names the field."""


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids recorded in config.json and generation_config.json (None where the tokenizer has none)."""

    bos: Optional[int] = 1
    eos: Optional[int] = 2
    pad: Optional[int] = None


def model_type(model: ModelConfig, norm: NormConfig) -> str:
    plain = all(spec.kind == "pre" and spec.qkv_norm == "none" for spec in layer_plan(model, norm))
    return LLAMA if plain and not norm.gpas and not embed_norm_on(norm) else MIXLN


def hf_fields(model: ModelConfig, norm: NormConfig, special: SpecialTokens = SpecialTokens()) -> Dict[str, Any]:
    """Keyword arguments for transformers' LlamaConfig (or the exported MixLNConfig, which extends it)."""
    plan = layer_plan(model, norm)
    fields: Dict[str, Any] = dict(
        vocab_size=model.vocab_size,
        hidden_size=model.dim,
        intermediate_size=model.ffn_dim,
        num_hidden_layers=model.n_layers,
        num_attention_heads=model.n_heads,
        num_key_value_heads=model.kv_heads,
        head_dim=model.head_dim,
        hidden_act="silu",
        max_position_embeddings=model.max_seq_len,
        rms_norm_eps=model.norm_eps,
        rope_theta=model.rope_theta,
        tie_word_embeddings=model.tie_embeddings,
        initializer_range=model.init_std,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=special.bos,
        eos_token_id=special.eos,
        pad_token_id=special.pad,
    )
    if model_type(model, norm) == MIXLN:
        fields.update(
            layer_kinds=[spec.kind for spec in plan],
            residual_scales=[spec.residual_scale for spec in plan],
            norm_scales=[spec.norm_scale for spec in plan],
            qkv_norms=[spec.qkv_norm for spec in plan],
            gpas=norm.gpas,
            embed_norm=embed_norm_on(norm),
            norm_scheme=norm.scheme,
            norm_alpha=norm.alpha if norm.scheme == "mix" else None,
            norm_post_layers=norm.post_layers,
            norm_hybrid_star=norm.hybrid_star,
        )
    return fields


def from_hf_fields(config: Dict[str, Any], name: str = "hf") -> Tuple[ModelConfig, NormConfig]:
    """A config.json (as a dict) of a Llama or exported Mix-LN model -> (ModelConfig, NormConfig).

    Raises HFConfigError for anything our model does not implement (biases, RoPE scaling, other activations...)
    rather than importing a model that would compute something else.
    """
    kind = config.get("model_type")
    if kind not in (LLAMA, MIXLN):
        raise HFConfigError(f"model_type '{kind}' is not supported; only '{LLAMA}' and '{MIXLN}' folders import")
    _require(config, "hidden_act", ("silu",), default="silu")
    _require(config, "attention_bias", (False,), default=False)
    _require(config, "mlp_bias", (False,), default=False)
    _require(config, "pretraining_tp", (1, None), default=1)
    dim, n_heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim") not in (None, dim // n_heads):
        raise HFConfigError(f"head_dim={config['head_dim']} differs from hidden_size / num_attention_heads = "
                            f"{dim // n_heads}; our attention derives the head size from the width")
    model = ModelConfig(
        name=name,
        dim=dim,
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or None,
        ffn_dim=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        max_seq_len=config.get("max_position_embeddings", 2048),
        rope_theta=_rope_theta(config),
        norm_eps=config.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        init_std=config.get("initializer_range", 0.02),
    )
    if model.n_kv_heads == model.n_heads:
        model.n_kv_heads = None  # our convention for multi-head attention
    if kind == LLAMA:
        _check_constants(config, model, NormConfig(scheme="pre"))  # validates the shape
        return model, NormConfig(scheme="pre")
    kinds = list(config["layer_kinds"])
    scheme = config.get("norm_scheme", "mix")
    qkv = config.get("qkv_norms") or ["none"] * model.n_layers
    norm = NormConfig(scheme=scheme, gpas=bool(config.get("gpas", False)),
                      qk_norm=scheme != "hybrid" and "qk" in qkv, hybrid_star=bool(config.get("norm_hybrid_star")))
    embed = bool(config.get("embed_norm", False))
    norm.embed_norm = None if embed == embed_norm_on(norm) else embed  # null: the scheme's own choice
    if scheme == "mix":
        if config.get("norm_alpha") is not None:
            norm.alpha = float(config["norm_alpha"])
        norm.post_layers = config.get("norm_post_layers")
    try:
        derived = layer_kinds(norm, model.n_layers)
    except ModelConfigError as e:
        raise HFConfigError(f"norm_scheme/norm_alpha/norm_post_layers: {e}") from e
    if derived != kinds:  # a placement the scheme does not produce (layer surgery): keep it explicitly
        norm.layer_kinds = kinds
    _check_constants(config, model, norm)
    return model, norm


def _rope_theta(config: Dict[str, Any]) -> float:
    # transformers 5 nests RoPE settings in `rope_parameters`; 4.x had `rope_theta` and `rope_scaling`.
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise HFConfigError(f"RoPE type '{rope_type}' is not supported; our model implements plain RoPE only")
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def _require(config: Dict[str, Any], key: str, allowed: tuple, default: Any) -> None:
    value = config.get(key, default)
    if value not in allowed:
        raise HFConfigError(f"{key}={value!r} is not supported (our LLaMA has {key}={allowed[0]!r})")


def _check_constants(config: Dict[str, Any], model: ModelConfig, norm: NormConfig) -> None:
    """The recorded per-layer constants must be the ones our blocks compute, or the import would differ."""
    try:
        plan = layer_plan(model, norm)
    except ModelConfigError as e:
        raise HFConfigError(str(e)) from e
    for key, ours in (("residual_scales", [s.residual_scale for s in plan]),
                      ("norm_scales", [s.norm_scale for s in plan])):
        theirs = config.get(key, ours)
        if len(theirs) != len(ours) or not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(theirs, ours)):
            raise HFConfigError(f"{key}={theirs} differs from what layer_kinds {norm.layer_kinds} imply ({ours})")
    ours = [s.qkv_norm for s in plan]
    if config.get("qkv_norms", ours) != ours:
        raise HFConfigError(f"qkv_norms={config['qkv_norms']} is not what norm_scheme={norm.scheme} implies ({ours}); "
                            "our model normalises q/k/v either in every layer or in none")
