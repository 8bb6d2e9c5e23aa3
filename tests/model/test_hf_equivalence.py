"""norm=pre (and mix with alpha 0) is exactly HF's LlamaForCausalLM given the same weights."""

import pytest
import torch

from mixln_dist.export.keys import from_hf_llama, to_hf_llama
from mixln_dist.model import ModelConfig, NormConfig, Transformer

transformers = pytest.importorskip("transformers")

SHAPES = {
    "multi_head": dict(dim=64, n_layers=3, n_heads=4, n_kv_heads=None, ffn_dim=172),
    "grouped_query": dict(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, ffn_dim=256),
}


def hf_llama(cfg: ModelConfig):
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )
    return transformers.LlamaForCausalLM(hf_cfg).eval()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", [NormConfig(scheme="pre"), NormConfig(scheme="mix", alpha=0.0)], ids=["pre", "mix0"])
def test_logits_match_transformers(shape, norm):
    torch.manual_seed(0)
    cfg = ModelConfig(name="t", vocab_size=300, max_seq_len=64, rope_theta=5000.0, **SHAPES[shape])
    ours = Transformer(cfg, norm).eval()
    ours.init_weights()
    # Non-trivial norm weights, so a swapped norm would show.
    for name, p in ours.named_parameters():
        if "norm" in name:
            p.data.uniform_(0.5, 1.5)
    hf = hf_llama(cfg)
    missing, unexpected = hf.load_state_dict(to_hf_llama(ours.state_dict()), strict=True)
    assert not missing and not unexpected

    tokens = torch.randint(0, cfg.vocab_size, (3, 40))
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-5, f"max abs logit difference {diff:.3e}"


def test_state_dict_round_trips_through_hf_names():
    cfg = ModelConfig(name="t", vocab_size=100, **SHAPES["grouped_query"])
    model = Transformer(cfg, NormConfig(scheme="pre"))
    sd = model.state_dict()
    back = from_hf_llama(to_hf_llama(sd))
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
