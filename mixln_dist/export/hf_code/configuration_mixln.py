"""Configuration of a LLaMA decoder whose layers differ only in where their RMSNorms sit (Mix-LN and relatives).

Written by mixln_dist's Hugging Face export; self-contained (torch and transformers only).

Every layer-dependent constant is stored explicitly, so the modeling code derives nothing from the scheme name:
  layer_kinds      one of LAYER_KINDS per layer
  residual_scales  deepnorm's (2L)^(1/4) multiplier of the residual branch, 1.0 elsewhere
  norm_scales      lns's 1/sqrt(layer index + 1) multiplier of each norm output, 1.0 elsewhere
  qkv_norms        "none", "qk" (RMSNorm of the whole query and key projections, OLMo 2) or "qkv" (RMSNorm of
                   each head's query, key and value, HybridNorm), per layer
  gpas             a GPAS gate in every layer
  embed_norm       an RMSNorm on the embedding output
norm_scheme, norm_alpha, norm_post_layers and norm_hybrid_star record how the placement was chosen, for people
and for re-import.
"""

from transformers import LlamaConfig

LAYER_KINDS = ("pre", "post", "sandwich", "deepnorm", "lns", "reordered", "hybrid")
QKV_NORMS = ("none", "qk", "qkv")


class MixLNConfig(LlamaConfig):
    model_type = "mixln_llama"

    def __init__(self, layer_kinds=None, residual_scales=None, norm_scales=None, qkv_norms=None, gpas=False,
                 embed_norm=False, norm_scheme="mix", norm_alpha=None, norm_post_layers=None, norm_hybrid_star=False,
                 **kwargs):
        super().__init__(**kwargs)
        n = self.num_hidden_layers
        self.layer_kinds = list(layer_kinds) if layer_kinds is not None else ["pre"] * n
        self.residual_scales = [float(s) for s in residual_scales] if residual_scales is not None else [1.0] * n
        self.norm_scales = [float(s) for s in norm_scales] if norm_scales is not None else [1.0] * n
        self.qkv_norms = list(qkv_norms) if qkv_norms is not None else ["none"] * n
        self.gpas = bool(gpas)
        self.embed_norm = bool(embed_norm)
        self.norm_scheme = norm_scheme
        self.norm_alpha = norm_alpha
        self.norm_post_layers = norm_post_layers
        self.norm_hybrid_star = bool(norm_hybrid_star)
        for name in ("layer_kinds", "residual_scales", "norm_scales", "qkv_norms"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} layers (num_hidden_layers)")
        for name, allowed in (("layer_kinds", LAYER_KINDS), ("qkv_norms", QKV_NORMS)):
            unknown = sorted(set(getattr(self, name)) - set(allowed))
            if unknown:
                raise ValueError(f"unknown {name} {unknown}; expected one of {allowed}")


__all__ = ["MixLNConfig"]
