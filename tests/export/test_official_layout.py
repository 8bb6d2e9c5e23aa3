"""The official Mix-LN code's layout: its checkpoints import computing the logits it computed, our export in its
layout writes its checkpoints back tensor for tensor, and what it cannot compute is refused by name.

official_fixture/ holds tiny checkpoints saved by the official code itself, with the logits it computed on them
(official_fixture/README.md tells how they were made). The `official` test runs that code on our exports; it
needs a checkout of it and a Python with transformers 4.31 (see its docstring) and skips without them.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mixln_dist.export import ExportError, import_hf_model, load_hf, save_hf
from mixln_dist.model import ModelConfig, NormConfig, Transformer

pytest.importorskip("transformers")

FIXTURE = Path(__file__).parent / "official_fixture"
CASES = {"post_pre": ["post", "post", "pre", "pre"], "sandwich": ["sandwich"] * 4}
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings", "model_type")


def official_shaped_model(norm: NormConfig, seed: int = 0) -> Transformer:
    """Multi-head attention and RoPE base 10000, as the official code has; non-trivial norm weights."""
    torch.manual_seed(seed)
    cfg = ModelConfig(name="t", dim=64, n_layers=4, n_heads=4, ffn_dim=172, vocab_size=300, max_seq_len=64)
    model = Transformer(cfg, norm).eval()
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("case", CASES)
def test_an_official_checkpoint_imports_computing_the_official_logits(case):
    model = import_hf_model(FIXTURE / case)
    assert model.layer_kinds == CASES[case]
    reference = load_file(FIXTURE / case / "logits.safetensors")  # computed by the official code
    with torch.no_grad():
        diff = (model(reference["tokens"]) - reference["logits"]).abs().max().item()
    assert diff < 1e-5, f"max abs logit difference {diff:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_the_official_layout_export_writes_the_official_checkpoint_back(case, tmp_path):
    model = import_hf_model(FIXTURE / case)
    save_hf(model.state_dict(), model.cfg, model.norm_cfg, tmp_path / "out", layout="official")
    theirs, ours = load_file(FIXTURE / case / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert ours.keys() == theirs.keys()  # the rotary inv_freq buffers included: it loads without a warning
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key
    their_config = json.loads((FIXTURE / case / "config.json").read_text())
    our_config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {k: our_config[k] for k in SHAPE_FIELDS} == {k: their_config[k] for k in SHAPE_FIELDS}
    env = json.loads((FIXTURE / case / "norm_env.json").read_text())  # the NORM_TYPE/POST_NUM it was made with
    assert our_config["norm_type"] == env["NORM_TYPE"]
    assert str(our_config.get("post_num")) == env.get("POST_NUM", "None")


@pytest.mark.parametrize("norm", [NormConfig(scheme="mix", alpha=0.5), NormConfig(scheme="post"),
                                  NormConfig(scheme="sandwich"), NormConfig(scheme="peri", embed_norm=False)],
                         ids=["mix", "post", "sandwich", "peri_without_embed_norm"])
def test_official_layout_round_trip_is_exact(tmp_path, norm):
    model = official_shaped_model(norm)
    result = save_hf(model.state_dict(), model.cfg, model.norm_cfg, tmp_path / "out", layout="official")
    assert result.verification.max_abs_logit_diff == 0.0 and result.verification.generation_equal
    state, _, norm_back = load_hf(tmp_path / "out")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert Transformer(model.cfg, norm_back).layer_kinds == model.layer_kinds


@pytest.mark.parametrize("norm, shape, message", [
    (NormConfig(scheme="lns"), {}, r"layer kinds \['lns'"),
    (NormConfig(scheme="deepnorm"), {}, "hard-codes the residual scale"),
    (NormConfig(scheme="reordered"), {}, r"layer kinds \['reordered'"),
    (NormConfig(scheme="hybrid"), {}, "QK/QKV-norm"),
    (NormConfig(scheme="mix", qk_norm=True), {}, "QK/QKV-norm"),
    (NormConfig(scheme="mix", gpas=True), {}, "GPAS"),
    (NormConfig(scheme="peri"), {}, "embedding norm"),
    (NormConfig(scheme="mix"), {"n_kv_heads": 2}, "grouped-query attention"),
    (NormConfig(scheme="mix"), {"rope_theta": 5e5}, "RoPE base"),
])
def test_what_the_official_code_cannot_compute_is_refused_by_name(tmp_path, norm, shape, message):
    cfg = ModelConfig(name="t", dim=32, n_layers=4, n_heads=4, ffn_dim=64, vocab_size=64, max_seq_len=16, **shape)
    model = Transformer(cfg, norm)
    with pytest.raises(ExportError, match=message):
        save_hf(model.state_dict(), cfg, norm, tmp_path / "out", layout="official", verify=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.official
@pytest.mark.parametrize("norm", [NormConfig(scheme="mix", alpha=0.5), NormConfig(scheme="post"),
                                  NormConfig(scheme="sandwich"), NormConfig(scheme="pre")],
                         ids=["mix", "post", "sandwich", "pre"])
def test_the_official_code_computes_our_official_layout_export(tmp_path, norm):
    """MIXLN_OFFICIAL_CODE=<checkout of pixeli99/MixLN> MIXLN_OFFICIAL_PYTHON=<python with transformers==4.31>
    .venv/bin/python -m pytest -m official tests/export/test_official_layout.py"""
    code, python = os.environ.get("MIXLN_OFFICIAL_CODE"), os.environ.get("MIXLN_OFFICIAL_PYTHON")
    if not (code and python):
        pytest.skip("set MIXLN_OFFICIAL_CODE and MIXLN_OFFICIAL_PYTHON to run the official Mix-LN code")
    model = official_shaped_model(norm, seed=3)
    save_hf(model.state_dict(), model.cfg, model.norm_cfg, tmp_path / "out", layout="official")
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 40))
    save_file({"tokens": tokens}, tmp_path / "tokens.safetensors")
    script = FIXTURE / "official_logits.py"
    subprocess.run([python, str(script), "logits", str(tmp_path / "out"), str(tmp_path / "tokens.safetensors"),
                    str(tmp_path / "logits.safetensors")], check=True, env={**os.environ, "MIXLN_OFFICIAL_CODE": code})
    with torch.no_grad():
        diff = (model(tokens) - load_file(tmp_path / "logits.safetensors")["logits"]).abs().max().item()
    assert diff < 1e-5, f"the official code's logits differ from ours by {diff:.2e}"
