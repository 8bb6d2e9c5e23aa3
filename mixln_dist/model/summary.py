"""A model's size and per-layer norm placement, as text for people (`mixln-model`, the trainer's start log).

Works on a model built on the meta device, so a 13B model is summarised without allocating its weights.
"""

from __future__ import annotations

from itertools import groupby

from .transformer import Transformer, count_parameters

KIND_NAMES = {"pre": "Pre-LN", "post": "Post-LN", "sandwich": "Sandwich-LN", "deepnorm": "DeepNorm (Post-LN)",
              "lns": "Pre-LN + LayerNorm Scaling"}


def summarize(model: Transformer) -> str:
    cfg, norm = model.cfg, model.norm_cfg
    counts = count_parameters(model)
    lines = [
        f"model {cfg.name}: dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads of {cfg.head_dim}, "
        f"{cfg.kv_heads} kv heads, ffn {cfg.ffn_dim}, vocab {cfg.vocab_size}, "
        f"{'tied' if cfg.tie_embeddings else 'untied'} head",
        f"parameters: {counts['total']:,} total ({counts['total'] / 1e9:.2f}B), "
        f"{counts['non_embedding']:,} non-embedding ({counts['non_embedding'] / 1e9:.2f}B)",
        f"norm scheme: {norm.scheme}" + (f", scaled init" if norm.scaled_init else ""),
    ]
    kinds = model.layer_kinds
    start = 0
    for kind, run in groupby(kinds):
        n = len(list(run))
        span = f"layer {start}" if n == 1 else f"layers {start}-{start + n - 1}"
        lines.append(f"  {span:<14} {KIND_NAMES[kind]} ({n} layer{'s' if n > 1 else ''})")
        start += n
    n_post = sum(layer.spec.is_post for layer in model.layers)
    lines.append(f"  {n_post} Post-LN layers, {len(kinds) - n_post} Pre-LN-style layers")
    return "\n".join(lines)
