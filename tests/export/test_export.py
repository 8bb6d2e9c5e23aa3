"""Export, then load with transformers exactly as users do: the logits and the greedy generation must be ours."""

import json

import pytest
import torch

from mixln_dist.export import ExportError, load_hf, save_hf, verify_export

transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors.torch")

# id -> (norm.scheme, other norm settings); the later placements and every composable switch included.
SCHEMES = {"pre": ("pre", {}), "mix": ("mix", {}), "post": ("post", {}), "deepnorm": ("deepnorm", {}),
           "sandwich": ("sandwich", {}), "lns": ("lns", {}), "peri": ("peri", {}), "reordered": ("reordered", {}),
           "reordered_qk": ("reordered", {"qk_norm": True}), "hybrid": ("hybrid", {}),
           "hybrid_star": ("hybrid", {"hybrid_star": True}), "mix_gpas": ("mix", {"alpha": 0.5, "gpas": True}),
           "pre_gpas_qk_embed_norm": ("pre", {"gpas": True, "qk_norm": True, "embed_norm": True})}


def export(model, out, **kw):
    return save_hf(model.state_dict(), model.cfg, model.norm_cfg, out, **kw)


@pytest.mark.parametrize("variant", SCHEMES)
def test_transformers_reproduces_logits_and_greedy_generation(tiny_model, tokenizer_path, tmp_path, variant):
    scheme, settings = SCHEMES[variant]
    model = tiny_model(scheme, **settings)
    result = export(model, tmp_path / "hf", tokenizer=tokenizer_path)  # verifies, or raises
    v = result.verification
    assert v.max_abs_logit_diff < 1e-5 and v.generation_equal, v
    assert v.positions == 128 and v.new_tokens == 16

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 5000.0  # for 4.x-era readers too
    if variant == "pre":  # a stock Llama: no remote code, no custom fields
        assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
        assert "auto_map" not in config and not (tmp_path / "hf" / "modeling_mixln.py").exists()
    else:
        assert config["model_type"] == "mixln_llama" and config["architectures"] == ["MixLNForCausalLM"]
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_mixln.MixLNForCausalLM"
        assert config["norm_scheme"] == scheme and config["layer_kinds"] == model.layer_kinds
        assert config["residual_scales"] == [s.residual_scale for s in model.plan]
        assert config["norm_scales"] == [s.norm_scale for s in model.plan]
        assert config["qkv_norms"] == [s.qkv_norm for s in model.plan]
        assert config["gpas"] is model.norm_cfg.gpas and config["embed_norm"] is hasattr(model.embed_norm, "weight")


def test_mix_records_its_placement_and_keeps_llama_weight_names(tiny_model, tmp_path):
    model = tiny_model("mix", post_layers=1)
    export(model, tmp_path / "hf", verify=False)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["layer_kinds"] == ["post", "pre", "pre", "pre"] and config["norm_post_layers"] == 1
    names = set(safetensors.load_file(tmp_path / "hf" / "model.safetensors"))
    llama = set(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2)).state_dict())
    assert names == llama


@pytest.mark.parametrize("tie, n_kv_heads", [(True, None), (False, 1)], ids=["tied_mha", "untied_mqa"])
def test_embedding_tying_and_kv_heads(tiny_model, tmp_path, tie, n_kv_heads):
    model = tiny_model("mix", tie=tie, n_kv_heads=n_kv_heads)
    v = export(model, tmp_path / "hf").verification
    assert v.max_abs_logit_diff < 1e-5 and v.generation_equal
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tie_word_embeddings"] is tie


def test_bf16_export_stores_bf16_and_computes_with_the_rounded_weights(tiny_model, tmp_path):
    model = tiny_model("mix")
    v = export(model, tmp_path / "hf", dtype=torch.bfloat16).verification
    assert v.max_abs_logit_diff < 1e-5 and v.generation_equal
    stored = safetensors.load_file(tmp_path / "hf" / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"


def test_large_models_are_sharded_and_shards_load_both_ways(tiny_model, tmp_path):
    model = tiny_model("mix")
    export(model, tmp_path / "hf", shard_size="100KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    state, _, _ = load_hf(tmp_path / "hf")  # our import reads the shards too
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_refuses_to_overwrite_and_leaves_nothing_behind(tiny_model, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty.*--force"):
        export(tiny_model("pre"), out)
    assert [p.name for p in tmp_path.iterdir()] == ["hf"] and (out / "notes.txt").read_text() == "mine"

    export(tiny_model("pre"), out, force=True, verify=False)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary or old folders left


def test_a_failed_verification_writes_nothing(tiny_model, tmp_path, monkeypatch):
    """If transformers computed something else, the export must not appear: here its RMSNorm epsilon differs."""
    import mixln_dist.export.convert as convert

    model = tiny_model("post")
    fields = convert.hf_fields
    monkeypatch.setattr(convert, "hf_fields", lambda *a, **k: {**fields(*a, **k), "rms_norm_eps": 1e-2})
    with pytest.raises(ExportError, match="verification failed"):
        export(model, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_verification_notices_a_wrong_model(tiny_model, tmp_path):
    export(tiny_model("mix", seed=0), tmp_path / "hf", verify=False)
    v = verify_export(tmp_path / "hf", tiny_model("mix", seed=1))
    assert v.max_abs_logit_diff > 1e-2 and not v.generation_equal
