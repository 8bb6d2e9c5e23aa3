"""Print a model's size and per-layer norm placement without allocating its weights.

    python -m mixln_dist.model model=llama_7b norm=mix norm.post_layers=2
"""

from __future__ import annotations

import sys
from itertools import groupby

import torch

from ..config import ConfigError, compose
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
    n_post = sum(k in ("post", "deepnorm") for k in kinds)
    lines.append(f"  {n_post} Post-LN layers, {len(kinds) - n_post} Pre-LN-style layers")
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        cfg = compose(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with torch.device("meta"):  # shapes only: a 13B model costs no memory here
        model = Transformer(cfg.model, cfg.norm)
    print(summarize(model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
