"""Configuration of a LLaMA decoder whose layers differ only in where their RMSNorms sit (Mix-LN and relatives).

Written by mixln_dist's Hugging Face export; self-contained (torch and transformers only).

Every layer-dependent constant is stored explicitly, so the modeling code derives nothing from the scheme name:
  layer_kinds      "pre" | "post" | "sandwich" | "deepnorm" | "lns", one per layer
  residual_scales  deepnorm's (2L)^(1/4) multiplier of the residual branch, 1.0 elsewhere
  norm_scales      lns's 1/sqrt(layer index + 1) multiplier of each norm output, 1.0 elsewhere
norm_scheme, norm_alpha and norm_post_layers record how the placement was chosen, for people and for re-import.
"""

from transformers import LlamaConfig

LAYER_KINDS = ("pre", "post", "sandwich", "deepnorm", "lns")


class MixLNConfig(LlamaConfig):
    model_type = "mixln_llama"

    def __init__(self, layer_kinds=None, residual_scales=None, norm_scales=None, norm_scheme="mix", norm_alpha=None,
                 norm_post_layers=None, **kwargs):
        super().__init__(**kwargs)
        n = self.num_hidden_layers
        self.layer_kinds = list(layer_kinds) if layer_kinds is not None else ["pre"] * n
        self.residual_scales = [float(s) for s in residual_scales] if residual_scales is not None else [1.0] * n
        self.norm_scales = [float(s) for s in norm_scales] if norm_scales is not None else [1.0] * n
        self.norm_scheme = norm_scheme
        self.norm_alpha = norm_alpha
        self.norm_post_layers = norm_post_layers
        for name in ("layer_kinds", "residual_scales", "norm_scales"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} layers (num_hidden_layers)")
        unknown = sorted(set(self.layer_kinds) - set(LAYER_KINDS))
        if unknown:
            raise ValueError(f"unknown layer kinds {unknown}; expected one of {LAYER_KINDS}")


__all__ = ["MixLNConfig"]
