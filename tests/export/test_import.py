"""Import: a Hugging Face Llama folder (or our own export) becomes our model, computing the same logits."""

import json

import pytest
import torch

from mixln_dist.export import ExportError, import_hf_model, load_hf, save_hf
from mixln_dist.model import NormConfig

transformers = pytest.importorskip("transformers")


def llama_folder(path, tie=False, **overrides):
    """A stock LlamaForCausalLM saved by transformers itself, with non-trivial norm weights."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=96, intermediate_size=256, num_hidden_layers=3,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                      rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie, **overrides)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_llama_folder_imports_with_its_logits(tmp_path, tie):
    hf = llama_folder(tmp_path / "llama", tie=tie)
    ours = import_hf_model(tmp_path / "llama")
    assert ours.layer_kinds == ["pre"] * 3 and ours.cfg.kv_heads == 2 and ours.cfg.rope_theta == 5000.0
    tokens = torch.randint(0, 300, (2, 48))
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-5, f"max abs logit difference {diff:.2e}"


def test_a_pre_ln_llama_starts_a_mix_ln_model_with_the_same_weights(tmp_path):
    llama_folder(tmp_path / "llama")
    state, _, _ = load_hf(tmp_path / "llama")
    mix = import_hf_model(tmp_path / "llama", norm=NormConfig(scheme="mix", post_layers=1))
    assert mix.layer_kinds == ["post", "pre", "pre"]
    assert all(torch.equal(mix.state_dict()[k], v) for k, v in state.items())
    sandwich = import_hf_model(tmp_path / "llama", norm=NormConfig(scheme="sandwich"))
    assert torch.equal(sandwich.layers[2].mlp_out_norm.weight, torch.ones(96))  # new norms start at 1
    gated = import_hf_model(tmp_path / "llama", norm=NormConfig(scheme="reordered", qk_norm=True, gpas=True))
    assert torch.equal(gated.layers[1].attn.k_norm.weight, torch.ones(2 * 16))  # 2 kv heads of 16
    assert torch.equal(gated.layers[1].gpas.gate, torch.zeros(1))  # gates start at the identity


@pytest.mark.parametrize("scheme, settings", [
    ("mix", {}), ("deepnorm", {}), ("sandwich", {}), ("lns", {}), ("peri", {}), ("peri", {"embed_norm": False}),
    ("reordered", {"qk_norm": True}), ("hybrid", {"hybrid_star": True}), ("mix", {"alpha": 0.5, "gpas": True}),
    ("post", {"embed_norm": True})], ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.items())))
def test_export_import_round_trip_is_exact(tiny_model, tmp_path, scheme, settings):
    model = tiny_model(scheme, **settings)
    save_hf(model.state_dict(), model.cfg, model.norm_cfg, tmp_path / "hf", verify=False)
    state, model_cfg, norm_cfg = load_hf(tmp_path / "hf")
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert norm_cfg == model.norm_cfg  # scheme, alpha, post_layers: the placement is derived, not listed
    for key in ("dim", "n_layers", "n_heads", "kv_heads", "ffn_dim", "vocab_size", "max_seq_len", "rope_theta",
                "norm_eps", "tie_embeddings"):
        assert getattr(model_cfg, key) == getattr(model.cfg, key), key


def test_a_placement_no_scheme_produces_is_kept_explicitly(tiny_model, tmp_path):
    model = tiny_model("mix", layer_kinds=["pre", "post", "pre", "post"])
    save_hf(model.state_dict(), model.cfg, model.norm_cfg, tmp_path / "hf", verify=False)
    assert import_hf_model(tmp_path / "hf").layer_kinds == ["pre", "post", "pre", "post"]


@pytest.mark.parametrize("change, message", [
    ({"attention_bias": True}, "attention_bias=True is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "RoPE type 'linear'"),
    ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
])
def test_what_our_model_cannot_compute_is_refused_by_name(tmp_path, change, message):
    llama_folder(tmp_path / "llama")
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    (tmp_path / "llama" / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ExportError, match=message):
        load_hf(tmp_path / "llama")


def test_a_folder_without_weights_is_named(tmp_path):
    llama_folder(tmp_path / "llama")
    (tmp_path / "llama" / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="no model.safetensors"):
        load_hf(tmp_path / "llama")
