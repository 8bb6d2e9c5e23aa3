"""A LLaMA decoder whose layers each keep their own RMSNorm placement: Mix-LN (Post-LN first, Pre-LN after),
Post-LN, DeepNorm, Sandwich-LN and LayerNorm Scaling.

Written by mixln_dist's Hugging Face export; self-contained (torch and transformers only). Everything but the
decoder layer is transformers' Llama: embeddings, rotary embeddings, attention (any attention implementation),
KV cache and generation. Weight names are Llama's, so a Pre-LN layer here is exactly a LlamaDecoderLayer:
  input_layernorm            the attention norm (Pre-LN: on the attention input; Post-LN: on the residual sum)
  post_attention_layernorm   the MLP norm (same two placements)
  attn_output_layernorm,     Sandwich-LN only: the norms on the attention and MLP outputs
  mlp_output_layernorm
Which class each layer gets is decided once, from `config.layer_kinds`; no forward pass looks at a scheme name.
"""

import torch
import transformers
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    LlamaRMSNorm,
)

from .configuration_mixln import MixLNConfig

if int(transformers.__version__.split(".")[0]) < 5:  # 4.x's decoder-layer and config interfaces differ
    raise ImportError(f"this model's code needs transformers >= 5 (found {transformers.__version__}); "
                      "upgrade with: pip install -U 'transformers>=5'")


class ScaledRMSNorm(LlamaRMSNorm):
    """RMSNorm whose output is multiplied by a fixed constant (LayerNorm Scaling: 1/sqrt(layer index))."""

    def __init__(self, hidden_size, eps, scale):
        super().__init__(hidden_size, eps=eps)
        self.scale = scale

    def forward(self, hidden_states):
        return super().forward(hidden_states) * self.scale


class _Layer(LlamaDecoderLayer):
    """Llama's sublayers and norms; subclasses only differ in `forward`.

    Keyword arguments other than the mask and position embeddings (position ids, the KV cache under whichever
    name this transformers version uses, attention-implementation options) go to attention untouched.
    """

    def attention(self, x, attention_mask, position_embeddings, kwargs):
        out, _ = self.self_attn(hidden_states=x, attention_mask=attention_mask,
                                position_embeddings=position_embeddings, **kwargs)
        return out


class PostLNDecoderLayer(_Layer):
    """h = N(x + Attn(x)); out = N(h + MLP(h))."""

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        h = self.input_layernorm(hidden_states + self.attention(hidden_states, attention_mask, position_embeddings,
                                                                kwargs))
        return self.post_attention_layernorm(h + self.mlp(h))


class DeepNormDecoderLayer(_Layer):
    """Post-LN with the residual up-weighted: h = N(a*x + Attn(x)); out = N(a*h + MLP(h)), a = (2L)^(1/4)."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.residual_scale = config.residual_scales[layer_idx]

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        a = self.residual_scale
        h = self.input_layernorm(a * hidden_states + self.attention(hidden_states, attention_mask,
                                                                    position_embeddings, kwargs))
        return self.post_attention_layernorm(a * h + self.mlp(h))


class SandwichDecoderLayer(_Layer):
    """A norm on both sides of each sublayer, inside the residual: h = x + N(Attn(N(x))); out = h + N(MLP(N(h)))."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.attn_output_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp_output_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        attn = self.attention(self.input_layernorm(hidden_states), attention_mask, position_embeddings, kwargs)
        h = hidden_states + self.attn_output_layernorm(attn)
        return h + self.mlp_output_layernorm(self.mlp(self.post_attention_layernorm(h)))


class LayerNormScalingDecoderLayer(_Layer):
    """Pre-LN whose norm outputs are scaled by 1/sqrt(l) (LayerNorm Scaling, "The Curse of Depth")."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        scale = config.norm_scales[layer_idx]
        self.input_layernorm = ScaledRMSNorm(config.hidden_size, config.rms_norm_eps, scale)
        self.post_attention_layernorm = ScaledRMSNorm(config.hidden_size, config.rms_norm_eps, scale)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        h = hidden_states + self.attention(self.input_layernorm(hidden_states), attention_mask, position_embeddings,
                                           kwargs)
        return h + self.mlp(self.post_attention_layernorm(h))


LAYERS = {
    "pre": LlamaDecoderLayer,
    "post": PostLNDecoderLayer,
    "deepnorm": DeepNormDecoderLayer,
    "sandwich": SandwichDecoderLayer,
    "lns": LayerNormScalingDecoderLayer,
}


class MixLNModel(LlamaModel):
    config_class = MixLNConfig
    _no_split_modules = [cls.__name__ for cls in LAYERS.values()]

    def __init__(self, config: MixLNConfig):
        super().__init__(config)
        # Llama's stack, rebuilt with each layer's own placement (from_pretrained builds on the meta device, so
        # the discarded Llama layers cost nothing there).
        self.layers = torch.nn.ModuleList(LAYERS[kind](config, i) for i, kind in enumerate(config.layer_kinds))
        self.post_init()


class MixLNForCausalLM(LlamaForCausalLM):
    config_class = MixLNConfig
    _no_split_modules = MixLNModel._no_split_modules

    def __init__(self, config: MixLNConfig):
        super().__init__(config)
        self.model = MixLNModel(config)
        self.post_init()


__all__ = ["MixLNForCausalLM", "MixLNModel"]
