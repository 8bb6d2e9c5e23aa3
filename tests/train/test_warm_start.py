"""train.init_from seeds a fresh run from a Hugging Face Llama folder or one of our checkpoints."""

import deepspeed
import pytest
import torch

from conftest import TINY_VOCAB, tiny_overrides
from mixln_dist.checkpoint import CheckpointError, load_model
from mixln_dist.config import compose
from mixln_dist.export import from_hf_llama

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A stock transformers Llama with the tiny test shape, saved the way transformers saves it."""
    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=176,
                                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                      max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def engine_weights(trainer):
    params = list(trainer.engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=trainer.cfg.zero.zero_init):
        return {n: p.detach().clone() for n, p in params}


@pytest.mark.parametrize("zero", ["zero=stage2", "zero=stage3_init"])
def test_a_pre_ln_llama_seeds_a_mix_ln_run(zero, env, tiny_dataset, llama_folder, tmp_path):
    from mixln_dist.train.trainer import Trainer
    from safetensors.torch import load_file

    cfg = compose(tiny_overrides(tiny_dataset, tmp_path, zero, "norm=mix", f"train.init_from={llama_folder}",
                                 "train.steps=2", "train.eval_interval=2"))
    trainer = Trainer(cfg, env, log=lambda *a, **k: None)
    expected = from_hf_llama(load_file(llama_folder / "model.safetensors"))
    weights = engine_weights(trainer)
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name
    assert trainer.engine.module.layer_kinds == ["post", "pre", "pre", "pre"]
    assert trainer.fit()["step"] == 2
    trainer.close()


@pytest.fixture(scope="module")
def pre_ln_run(env, tiny_dataset, tmp_path_factory):
    """One of our checkpoints: a Pre-LN run trained 2 steps."""
    from mixln_dist.train.trainer import Trainer

    out = tmp_path_factory.mktemp("source")
    source = Trainer(compose(tiny_overrides(tiny_dataset, out, "norm=pre", "train.steps=2")), env,
                     log=lambda *a, **k: None)
    source.fit()
    source.close()
    return out / "debug-pre"


# Targets whose weights share every name with Pre-LN's, plus norms and gates of their own.
TARGETS = {"sandwich": ("norm=sandwich",), "peri": ("norm=peri",),
           "reordered_qk": ("norm=reordered", "norm.qk_norm=true"), "mix_gpas": ("norm=mix", "norm.gpas=true")}


@pytest.mark.parametrize("target", TARGETS)
def test_our_checkpoint_seeds_a_run_with_another_scheme(target, env, tiny_dataset, pre_ln_run, tmp_path):
    from mixln_dist.train.trainer import Trainer

    trained, _, _ = load_model(pre_ln_run)
    cfg = compose(tiny_overrides(tiny_dataset, tmp_path, *TARGETS[target], f"train.init_from={pre_ln_run}"))
    trainer = Trainer(cfg, env, log=lambda *a, **k: None)
    weights = engine_weights(trainer)
    for name, tensor in trained.state_dict().items():
        assert torch.equal(weights[name], tensor), name
    extras = set(weights) - set(trained.state_dict())
    assert extras, "the target scheme should have norms or gates of its own"
    for name in extras:  # the target's own norms start at 1, its GPAS gates at 0
        assert torch.equal(weights[name], torch.zeros(1) if name.endswith("gpas.gate") else torch.ones(64)), name
    trainer.close()


def test_a_source_missing_weights_the_target_needs_is_refused(env, tiny_dataset, pre_ln_run, tmp_path):
    """HybridNorm's blocks have no attention input norm: a Pre-LN checkpoint does not fit them."""
    from mixln_dist.train.trainer import Trainer

    cfg = compose(tiny_overrides(tiny_dataset, tmp_path, "norm=hybrid", f"train.init_from={pre_ln_run}"))
    with pytest.raises(CheckpointError, match=r"does not fit this model: .*unexpected \['layers.0.attn_norm.weight'"):
        Trainer(cfg, env)


def test_a_source_of_another_shape_is_refused(env, tiny_dataset, llama_folder, tmp_path):
    from mixln_dist.train.trainer import Trainer

    cfg = compose(tiny_overrides(tiny_dataset, tmp_path, "model.n_layers=2", f"train.init_from={llama_folder}"))
    with pytest.raises(CheckpointError, match=r"another model shape \(model.n_layers: 4 there, 2 here\)"):
        Trainer(cfg, env)
