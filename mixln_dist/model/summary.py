"""A model's size and per-layer norm placement, as text for people (`mixln-model`, the trainer's start log).

Works on a model built on the meta device, so a 13B model is summarised without allocating its weights.
"""

from __future__ import annotations

from itertools import groupby

from .args import POST_KINDS, embed_norm_on
from .transformer import Transformer, count_parameters

KIND_NAMES = {"pre": "Pre-LN", "post": "Post-LN", "sandwich": "Sandwich-LN (= Peri-LN block)",
              "deepnorm": "DeepNorm (Post-LN)", "lns": "Pre-LN + LayerNorm Scaling",
              "reordered": "reordered norm (OLMo 2)", "hybrid": "HybridNorm (Post-LN feed-forward)"}
QKV_NAMES = {"none": "", "qk": " + QK-norm", "qkv": " + QKV-norm"}


def summarize(model: Transformer) -> str:
    cfg, norm = model.cfg, model.norm_cfg
    counts = count_parameters(model)
    lines = [
        f"model {cfg.name}: dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads of {cfg.head_dim}, "
        f"{cfg.kv_heads} kv heads, ffn {cfg.ffn_dim}, vocab {cfg.vocab_size}, "
        f"{'tied' if cfg.tie_embeddings else 'untied'} head",
        f"parameters: {counts['total']:,} total ({counts['total'] / 1e9:.2f}B), "
        f"{counts['non_embedding']:,} non-embedding ({counts['non_embedding'] / 1e9:.2f}B)",
        f"norm scheme: {norm.scheme}" + "".join(f", {name}" for name in _switches(model)),
    ]
    start = 0
    for name, run in groupby(_layer_name(spec) for spec in model.plan):
        n = len(list(run))
        span = f"layer {start}" if n == 1 else f"layers {start}-{start + n - 1}"
        lines.append(f"  {span:<14} {name} ({n} layer{'s' if n > 1 else ''})")
        start += n
    kinds = model.layer_kinds
    n_post = sum(k in POST_KINDS for k in kinds)
    lines.append(f"  {n_post} Post-LN layers, {len(kinds) - n_post} layers whose residual stream is not normalised")
    return "\n".join(lines)


def _switches(model: Transformer) -> list:
    norm = model.norm_cfg
    switches = [("scaled init", norm.scaled_init), ("HybridNorm*", norm.hybrid_star),
                ("embedding norm", embed_norm_on(norm)), ("GPAS", norm.gpas)]
    return [name for name, on in switches if on]


def _layer_name(spec) -> str:
    return KIND_NAMES[spec.kind] + QKV_NAMES[spec.qkv_norm] + (" + GPAS" if spec.gpas else "")
