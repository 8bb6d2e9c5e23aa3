"""A LLaMA decoder whose layers each keep their own RMSNorm placement: Mix-LN (Post-LN first, Pre-LN after),
Post-LN, DeepNorm, Sandwich-LN (= Peri-LN's block), LayerNorm Scaling, OLMo 2's reordered norm and HybridNorm,
optionally with QK/QKV-norm, GPAS gates and an embedding norm.

Written by mixln_dist's Hugging Face export; self-contained (torch and transformers only). Everything else is
transformers' Llama: embeddings, rotary embeddings, attention (any attention implementation), KV cache and
generation. Weight names are Llama's, each norm named by the sublayer it serves, whatever its placement:
  input_layernorm            the attention norm (Pre-LN: on the attention input; Post-LN: on the residual sum;
                             reordered: on the attention output); HybridNorm layers have none
  post_attention_layernorm   the MLP norm (the same placements; HybridNorm: on the residual sum before the MLP)
  attn_output_layernorm,     Sandwich-LN only: the norms on the attention and MLP outputs
  mlp_output_layernorm
  self_attn.q_norm/k_norm    QK-norm (`qkv_norms` "qk": over each whole projection) or QKV-norm ("qkv": per head,
  self_attn.v_norm           one weight of head size); applied to the projections' outputs, before RoPE
  gpas.gate                  the layer's GPAS gate (`gpas`): x - SiLU(g) * x.detach() at each residual add
  model.embed_norm           the embedding norm (`embed_norm`)
Which class each layer gets is decided once, from `config.layer_kinds`; no forward pass looks at a scheme name.
"""

import torch
import transformers
from torch import nn
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


class HeadRMSNorm(LlamaRMSNorm):
    """RMSNorm of each head's slice of a projection, one weight of head size shared by the heads (HybridNorm)."""

    def __init__(self, head_dim, eps):
        super().__init__(head_dim, eps=eps)
        self.head_dim = head_dim

    def forward(self, hidden_states):
        return super().forward(hidden_states.unflatten(-1, (-1, self.head_dim))).flatten(-2)


class GPAS(nn.Module):
    """Gradient-preserving activation scaling: the value shrinks by SiLU(gate), the gradient passes unscaled."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, hidden_states):
        return hidden_states - nn.functional.silu(self.gate) * hidden_states.detach()


def add_projection_norms(attn, kind, config):
    """Give Llama's attention its q/k(/v) norms. Forward hooks on the projections apply them, so transformers'
    own attention forward (every attention implementation, every KV-cache interface) stays untouched."""
    if kind == "none":
        return
    eps, hd = config.rms_norm_eps, attn.head_dim
    if kind == "qk":
        attn.q_norm = LlamaRMSNorm(config.num_attention_heads * hd, eps=eps)
        attn.k_norm = LlamaRMSNorm(config.num_key_value_heads * hd, eps=eps)
        pairs = [(attn.q_proj, attn.q_norm), (attn.k_proj, attn.k_norm)]
    else:  # "qkv"
        attn.q_norm, attn.k_norm, attn.v_norm = (HeadRMSNorm(hd, eps) for _ in range(3))
        pairs = [(attn.q_proj, attn.q_norm), (attn.k_proj, attn.k_norm), (attn.v_proj, attn.v_norm)]
    for proj, norm in pairs:
        proj.register_forward_hook(lambda module, args, output, norm=norm: norm(output))


class _Layer(LlamaDecoderLayer):
    """Llama's sublayers and norms, plus this layer's projection norms and GPAS gate; subclasses only differ in
    `forward`. Keyword arguments other than the mask and position embeddings (position ids, the KV cache under
    whichever name this transformers version uses, attention-implementation options) go to attention untouched.
    """

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        add_projection_norms(self.self_attn, config.qkv_norms[layer_idx], config)
        self.gpas = GPAS() if config.gpas else nn.Identity()

    def attention(self, x, attention_mask, position_embeddings, kwargs):
        out, _ = self.self_attn(hidden_states=x, attention_mask=attention_mask,
                                position_embeddings=position_embeddings, **kwargs)
        return out


class PreLNDecoderLayer(_Layer):
    """h = x + Attn(N(x)); out = h + MLP(N(h)) (LlamaDecoderLayer's computation)."""

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        attn = self.attention(self.input_layernorm(hidden_states), attention_mask, position_embeddings, kwargs)
        h = self.gpas(hidden_states + attn)
        return self.gpas(h + self.mlp(self.post_attention_layernorm(h)))


class PostLNDecoderLayer(_Layer):
    """h = N(x + Attn(x)); out = N(h + MLP(h)); GPAS gates the skip: N(gpas(x) + Attn(x))."""

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        attn = self.attention(hidden_states, attention_mask, position_embeddings, kwargs)
        h = self.input_layernorm(self.gpas(hidden_states) + attn)
        return self.post_attention_layernorm(self.gpas(h) + self.mlp(h))


class DeepNormDecoderLayer(_Layer):
    """Post-LN with the residual up-weighted: h = N(a*x + Attn(x)); out = N(a*h + MLP(h)), a = (2L)^(1/4)."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.residual_scale = config.residual_scales[layer_idx]

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        a = self.residual_scale
        attn = self.attention(hidden_states, attention_mask, position_embeddings, kwargs)
        h = self.input_layernorm(a * self.gpas(hidden_states) + attn)
        return self.post_attention_layernorm(a * self.gpas(h) + self.mlp(h))


class SandwichDecoderLayer(_Layer):
    """A norm on both sides of each sublayer, inside the residual: h = x + N(Attn(N(x))); out = h + N(MLP(N(h)))."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.attn_output_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp_output_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        attn = self.attention(self.input_layernorm(hidden_states), attention_mask, position_embeddings, kwargs)
        h = self.gpas(hidden_states + self.attn_output_layernorm(attn))
        return self.gpas(h + self.mlp_output_layernorm(self.mlp(self.post_attention_layernorm(h))))


class LayerNormScalingDecoderLayer(PreLNDecoderLayer):
    """Pre-LN whose norm outputs are scaled by 1/sqrt(l) (LayerNorm Scaling, "The Curse of Depth")."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        scale = config.norm_scales[layer_idx]
        self.input_layernorm = ScaledRMSNorm(config.hidden_size, config.rms_norm_eps, scale)
        self.post_attention_layernorm = ScaledRMSNorm(config.hidden_size, config.rms_norm_eps, scale)


class ReorderedDecoderLayer(_Layer):
    """OLMo 2's reordered norm, on each sublayer's output: h = x + N(Attn(x)); out = h + N(MLP(h))."""

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        attn = self.attention(hidden_states, attention_mask, position_embeddings, kwargs)
        h = self.gpas(hidden_states + self.input_layernorm(attn))
        return self.gpas(h + self.post_attention_layernorm(self.mlp(h)))


class HybridNormDecoderLayer(_Layer):
    """HybridNorm: QKV-norm inside attention, Post-LN on the MLP: y = N(x + Attn(x)); out = y + MLP(y)."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        del self.input_layernorm  # the attention input is not normalised

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        attn = self.attention(hidden_states, attention_mask, position_embeddings, kwargs)
        y = self.post_attention_layernorm(self.gpas(hidden_states) + attn)
        return self.gpas(y + self.mlp(y))


LAYERS = {
    "pre": PreLNDecoderLayer,
    "post": PostLNDecoderLayer,
    "deepnorm": DeepNormDecoderLayer,
    "sandwich": SandwichDecoderLayer,
    "lns": LayerNormScalingDecoderLayer,
    "reordered": ReorderedDecoderLayer,
    "hybrid": HybridNormDecoderLayer,
}


class MixLNModel(LlamaModel):
    config_class = MixLNConfig
    _no_split_modules = [cls.__name__ for cls in LAYERS.values()]

    def __init__(self, config: MixLNConfig):
        super().__init__(config)
        # Llama's stack, rebuilt with each layer's own placement (from_pretrained builds on the meta device, so
        # the discarded Llama layers cost nothing there).
        self.layers = torch.nn.ModuleList(LAYERS[kind](config, i) for i, kind in enumerate(config.layer_kinds))
        self.embed_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps) if config.embed_norm \
            else nn.Identity()
        self.post_init()

    def forward(self, input_ids=None, *args, inputs_embeds=None, **kwargs):
        # The embedding norm acts on the looked-up embeddings, and on embeddings a caller passes in their place.
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed_tokens(input_ids)
        if inputs_embeds is not None:
            inputs_embeds = self.embed_norm(inputs_embeds)
        return super().forward(None, *args, inputs_embeds=inputs_embeds, **kwargs)


class MixLNForCausalLM(LlamaForCausalLM):
    config_class = MixLNConfig
    _no_split_modules = MixLNModel._no_split_modules

    def __init__(self, config: MixLNConfig):
        super().__init__(config)
        self.model = MixLNModel(config)
        self.post_init()


__all__ = ["MixLNForCausalLM", "MixLNModel"]
