"""Tiny models with every weight non-trivial, so a swapped or missing tensor shows in the logits."""

import pytest
import torch

from mixln_dist.model import ModelConfig, NormConfig, Transformer

VOCAB = 512  # the tiny_dataset tokenizer's size (tests/conftest.py)


def _tiny_model(scheme: str = "mix", *, seed: int = 0, tie: bool = False, n_kv_heads=2, **norm_kw) -> Transformer:
    """4 layers, grouped-query attention; mix has 2 Post-LN layers; norm weights drawn from U(0.5, 1.5), GPAS
    gates from U(-1, 1)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(name="tiny", dim=64, n_layers=4, n_heads=4, n_kv_heads=n_kv_heads, ffn_dim=172,
                      vocab_size=VOCAB, max_seq_len=128, rope_theta=5000.0, tie_embeddings=tie)
    norm = NormConfig(scheme=scheme, **({"alpha": 0.5} if scheme == "mix" and not norm_kw else norm_kw))
    model = Transformer(cfg, norm).eval()
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("gpas.gate"):
                p.uniform_(-1.0, 1.0)
    return model


@pytest.fixture(scope="session")
def tiny_model():
    """Factory: tiny_model(scheme, seed=0, tie=False, n_kv_heads=2, **norm settings) -> Transformer (eval)."""
    return _tiny_model


@pytest.fixture(scope="session")
def tokenizer_path(tiny_dataset):
    """The 512-piece BPE tokenizer the data package trained for tiny_dataset (pad 0, bos 1, eos 2, unk 3)."""
    return tiny_dataset / "tokenizer.model"
