"""Model and normalization settings, and the per-layer plan derived from them.

These dataclasses are the `model` and `norm` groups of the run configuration (mixln_dist.config), but they
import nothing from the rest of the package: the model can be built from them alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

SCHEMES = ("pre", "post", "mix", "sandwich", "deepnorm", "lns", "peri", "reordered", "hybrid")


class ModelConfigError(ValueError):
    """A model or norm setting that cannot describe a valid model."""


# Upper bounds far above any published model (the largest dense LLaMA has 126 layers, width 16384, vocabulary
# 128256, context 131072), so that a typo is refused instead of exhausting memory.
SIZE_LIMITS = {"dim": 1 << 18, "n_layers": 4096, "n_heads": 1 << 14, "ffn_dim": 1 << 20, "vocab_size": 1 << 26,
               "max_seq_len": 1 << 22}


@dataclass
class ModelConfig:
    name: str = MISSING  # flavor name, for logs and exports
    dim: int = MISSING  # hidden size
    n_layers: int = MISSING
    n_heads: int = MISSING
    n_kv_heads: Optional[int] = None  # None = n_heads (multi-head); fewer = grouped-query attention
    ffn_dim: int = MISSING  # SwiGLU intermediate size
    vocab_size: int = 32000  # rows of the embedding; the tokenizer's vocabulary must fit
    max_seq_len: int = 256  # longest sequence RoPE tables are built for
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False  # the paper's models use an untied LM head
    init_std: float = 0.02  # every Linear, the LM head included
    # The paper's code draws embeddings from N(0, sqrt(2/5)) whatever the width (not HF's 0.02).
    embed_init_std: float = math.sqrt(0.4)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def validate(self) -> None:
        for key, limit in SIZE_LIMITS.items():
            value = getattr(self, key)
            if value <= 0:
                raise ModelConfigError(f"model.{key} must be positive, got {value}")
            if value > limit:  # far beyond any real model; building its plan or RoPE tables would exhaust memory
                raise ModelConfigError(f"model.{key}={value} is larger than this code builds (at most {limit:,})")
        if self.dim % self.n_heads:
            raise ModelConfigError(
                f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}; "
                "choose n_heads so that dim / n_heads is a whole head size"
            )
        if self.head_dim % 2:
            raise ModelConfigError(f"model.dim={self.dim} / model.n_heads={self.n_heads} gives an odd head size "
                                   f"{self.head_dim}; RoPE needs an even one: change model.dim or model.n_heads")
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise ModelConfigError(
                f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads} "
                "(grouped-query attention shares each key/value head among n_heads / n_kv_heads query heads)"
            )


@dataclass
class NormConfig:
    # pre | post | mix | sandwich | deepnorm | lns | peri | reordered | hybrid (docs/model.md describes each)
    scheme: str = "mix"
    # mix: the first floor(alpha * n_layers) layers are Post-LN, the rest Pre-LN.
    alpha: float = 0.25
    # mix: an explicit number of leading Post-LN layers (the official code's POST_NUM); overrides alpha.
    post_layers: Optional[int] = None
    # std 0.02 / sqrt(2L) on o_proj and down_proj of every Pre-LN-style layer.
    scaled_init: bool = False
    # Explicit per-layer kinds ("pre"/"post"/...), written by layer surgery and exports; overrides the scheme's
    # own placement. Leave empty to derive it from scheme/alpha/post_layers.
    layer_kinds: List[str] = field(default_factory=list)
    # OLMo 2's QK-norm: an RMSNorm on the query and on the key projection (each over all its heads), before RoPE.
    # Any scheme but hybrid, which normalises q, k and v per head already.
    qk_norm: bool = False
    # An RMSNorm on the embedding output, before the first layer (Peri-LN's embedding normalisation). Any scheme;
    # null: the scheme's own choice (on for peri, off for the others).
    embed_norm: Optional[bool] = None
    # GPAS: after each residual add, x - SiLU(g) * stopgrad(x) with one learnable gate g per layer, starting at 0:
    # the forward activation shrinks, the backward gradient does not. Any scheme.
    gpas: bool = False
    # hybrid: HybridNorm*, whose first block is Pre-LN (keeping the QKV-norm) instead of HybridNorm's.
    hybrid_star: bool = False


# Per-layer plan -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """Everything a block needs to know about its own normalization, fixed at construction."""

    kind: str  # one of LAYER_KINDS: where the block's norms sit
    layer_id: int  # 0-based position in the original stack
    residual_scale: float = 1.0  # deepnorm: x is scaled by (2L)^(1/4) before the residual add
    norm_scale: float = 1.0  # lns: norm outputs scaled by 1/sqrt(layer_id + 1)
    out_proj_std: Optional[float] = None  # scaled init: std for o_proj and down_proj
    deepnorm_gain: Optional[float] = None  # deepnorm: xavier gain on v, o, gate, up, down
    qkv_norm: str = "none"  # one of QKV_NORMS: norms inside attention, on its projections
    gpas: bool = False  # a GPAS gate after each residual add

    @property
    def is_post(self) -> bool:
        return self.kind in POST_KINDS


LAYER_KINDS = ("pre", "post", "sandwich", "deepnorm", "lns", "reordered", "hybrid")
# "qk": OLMo 2's RMSNorm of the whole query and key projections; "qkv": HybridNorm's RMSNorm of each head's query,
# key and value (one weight of head size shared by the heads).
QKV_NORMS = ("none", "qk", "qkv")
POST_KINDS = ("post", "deepnorm")  # the residual stream itself is normalised: Post-LN


def num_post_layers(norm: NormConfig, n_layers: int) -> int:
    """How many leading layers of a `mix` model are Post-LN: post_layers if set, else floor(alpha * L)."""
    if norm.post_layers is not None:
        if not 0 <= norm.post_layers <= n_layers:
            raise ModelConfigError(
                f"norm.post_layers={norm.post_layers} is outside [0, n_layers={n_layers}]; "
                "set it to the number of leading Post-LN layers, or leave it null and use norm.alpha"
            )
        return norm.post_layers
    if not (isinstance(norm.alpha, (int, float)) and 0.0 <= norm.alpha <= 1.0) or math.isnan(norm.alpha):
        raise ModelConfigError(
            f"norm.alpha={norm.alpha} is outside [0, 1]; it is the fraction of layers that are Post-LN "
            "(the paper uses 0.25, and 0.0625 at 7B)"
        )
    # A small epsilon keeps 0.25 * 12 from flooring to 2 when alpha arrives as 0.2499999...
    return int(math.floor(norm.alpha * n_layers + 1e-9))


def layer_kinds(norm: NormConfig, n_layers: int) -> List[str]:
    """The norm placement of each layer, first to last."""
    if norm.scheme not in SCHEMES:
        import difflib

        close = difflib.get_close_matches(str(norm.scheme), SCHEMES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ModelConfigError(f"unknown norm.scheme '{norm.scheme}'{hint}; choose one of {', '.join(SCHEMES)}")
    if norm.scheme != "mix" and norm.post_layers is not None:
        raise ModelConfigError(
            f"norm.post_layers is only meaningful for norm.scheme=mix, but the scheme is '{norm.scheme}'"
        )
    if norm.hybrid_star and norm.scheme != "hybrid":
        raise ModelConfigError(f"norm.hybrid_star is HybridNorm's variant; it needs norm.scheme=hybrid, not "
                               f"'{norm.scheme}'")
    if norm.qk_norm and norm.scheme == "hybrid":
        raise ModelConfigError("norm.qk_norm=true adds nothing to norm.scheme=hybrid, which normalises queries, keys "
                               "and values per head already; leave norm.qk_norm false")
    if norm.layer_kinds:
        kinds = list(norm.layer_kinds)
        if len(kinds) != n_layers or any(k not in LAYER_KINDS for k in kinds):
            raise ModelConfigError(
                f"norm.layer_kinds must list one of {LAYER_KINDS} for each of the {n_layers} layers, got {kinds}"
            )
        if "hybrid" in kinds and norm.scheme != "hybrid":
            raise ModelConfigError("norm.layer_kinds lists 'hybrid' layers, which need norm.scheme=hybrid (their "
                                   f"attention normalises q, k and v), not '{norm.scheme}'")
        return kinds
    if norm.scheme == "mix":
        n_post = num_post_layers(norm, n_layers)
        return ["post"] * n_post + ["pre"] * (n_layers - n_post)
    if norm.scheme == "peri":  # Peri-LN's block is Sandwich-LN's (docs/model.md); the schemes differ outside it
        return ["sandwich"] * n_layers
    if norm.scheme == "hybrid" and norm.hybrid_star:  # HybridNorm*: a Pre-LN first block
        return ["pre"] + ["hybrid"] * (n_layers - 1)
    return [norm.scheme] * n_layers


def embed_norm_on(norm: NormConfig) -> bool:
    """norm.embed_norm, where null means the scheme's own choice: on for Peri-LN, off elsewhere."""
    return norm.scheme == "peri" if norm.embed_norm is None else bool(norm.embed_norm)


def layer_plan(model: ModelConfig, norm: NormConfig) -> List[LayerSpec]:
    """One LayerSpec per layer: the placement plus the depth-dependent constants of each scheme."""
    model.validate()
    n = model.n_layers
    kinds = layer_kinds(norm, n)
    if norm.scaled_init and all(k in POST_KINDS for k in kinds):
        raise ModelConfigError(
            "norm.scaled_init applies to Pre-LN-style layers, but every layer of this model is Post-LN; "
            "use it with scheme pre, mix, sandwich or lns"
        )
    # HybridNorm normalises q, k and v in every block, the HybridNorm* Pre-LN first block included.
    qkv_norm = "qkv" if norm.scheme == "hybrid" else "qk" if norm.qk_norm else "none"
    specs = []
    for i, kind in enumerate(kinds):
        specs.append(
            LayerSpec(
                kind=kind,
                layer_id=i,
                # DeepNet (Wang et al. 2022), decoder-only: alpha = (2N)^(1/4), beta = (8N)^(-1/4).
                residual_scale=(2 * n) ** 0.25 if kind == "deepnorm" else 1.0,
                deepnorm_gain=(8 * n) ** -0.25 if kind == "deepnorm" else None,
                # LayerNorm Scaling ("The Curse of Depth"): 1/sqrt(l) for layer l counted from 1.
                norm_scale=1.0 / math.sqrt(i + 1) if kind == "lns" else 1.0,
                # The official code's scale_post_pre: scaled init only where the layer is not Post-LN.
                out_proj_std=(
                    model.init_std / math.sqrt(2 * n) if norm.scaled_init and kind not in POST_KINDS else None
                ),
                qkv_norm=qkv_norm,
                gpas=norm.gpas,
            )
        )
    return specs
