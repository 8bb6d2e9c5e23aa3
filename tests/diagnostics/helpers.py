"""Tiny in-memory models for the diagnostics tests: real Transformers, a few milliseconds per forward."""

import dataclasses

import torch

from mixln_dist.model import ModelConfig, NormConfig, Transformer

TINY = ModelConfig(name="tiny", dim=32, n_layers=4, n_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=32)


def build(norm: NormConfig, seed: int = 0, **model_overrides) -> Transformer:
    cfg = dataclasses.replace(TINY, **model_overrides)
    model = Transformer(cfg, norm)
    torch.manual_seed(seed)
    model.init_weights()
    return model.eval()


def tokens(n: int, length: int, seed: int = 0, vocab: int = TINY.vocab_size) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def make_identity(block) -> None:
    """Zero a Pre-LN block's output projections: out = x + 0 + 0."""
    block.attn.o_proj.weight.zero_()
    block.mlp.down_proj.weight.zero_()
