"""Named model shapes. The paper's come from the official Mix-LN configs (docs/paper.md, "Setup"); all
use vocabulary 32000 (the T5 tokenizer's), RMSNorm eps 1e-6 and RoPE theta 10000.

`debug` is tiny and drives the tests and the default job; its vocabulary fits the bundled sample tokenizer.
"""

from __future__ import annotations

from typing import Dict

from .args import ModelConfig


def _flavor(name: str, dim: int, n_layers: int, n_heads: int, ffn_dim: int, **kw) -> ModelConfig:
    return ModelConfig(name=name, dim=dim, n_layers=n_layers, n_heads=n_heads, ffn_dim=ffn_dim, **kw)


FLAVORS: Dict[str, ModelConfig] = {
    f.name: f
    for f in (
        _flavor("debug", dim=128, n_layers=4, n_heads=4, ffn_dim=352, vocab_size=8192),
        _flavor("llama_71m", dim=512, n_layers=12, n_heads=8, ffn_dim=1368, max_seq_len=1024),
        _flavor("llama_130m", dim=768, n_layers=12, n_heads=12, ffn_dim=2048, max_seq_len=1024),
        # The official code has hidden 768 (head size 48); Table 7's 1024 would make a ~355M model.
        _flavor("llama_250m", dim=768, n_layers=24, n_heads=16, ffn_dim=2560, max_seq_len=1024),
        _flavor("llama_350m", dim=1024, n_layers=24, n_heads=16, ffn_dim=2736, max_seq_len=1024),
        _flavor("llama_1b", dim=2048, n_layers=24, n_heads=32, ffn_dim=5461, max_seq_len=1024),
        # GaLore's (and the Mix-LN repo's unused) llama_3b config: head size 80.
        _flavor("llama_3b", dim=2560, n_layers=32, n_heads=32, ffn_dim=6848, max_seq_len=1024),
        _flavor("llama_7b", dim=4096, n_layers=32, n_heads=32, ffn_dim=11008, max_seq_len=2048),
        _flavor("llama_13b", dim=5120, n_layers=40, n_heads=40, ffn_dim=13824, max_seq_len=2048),
    )
}
