"""Proof that an exported folder computes what our model computes: load it with transformers (the exact way users
will: AutoModelForCausalLM, trust_remote_code), compare logits on fixed random tokens, and compare greedy
generation (transformers' generate() with its KV cache against our full-recompute loop) token for token.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import torch

from ..model import Transformer


@dataclass
class Verification:
    max_abs_logit_diff: float  # over every vocabulary entry of every position compared
    generation_equal: bool  # greedy continuations identical
    positions: int  # tokens whose logits were compared
    new_tokens: int  # tokens generated greedily by each side
    seconds: float
    reader: str = "transformers"  # what loaded the folder to compare it with our model

    def passed(self, tolerance: float) -> bool:
        return self.max_abs_logit_diff < tolerance and self.generation_equal

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def greedy(model: Transformer, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation by recomputing the whole sequence each step: (B, P) -> (B, P + new_tokens)."""
    seq = prompt
    for _ in range(new_tokens):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def load_with_transformers(folder: Union[str, Path]):
    """The exported model as users load it: fp32, eval mode, remote code trusted (needed for Mix-LN)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, dtype=torch.float32).eval()


@torch.no_grad()
def verify_export(folder: Union[str, Path], reference: Transformer, seq_len: int = 64, batch: int = 2,
                  prompt_len: int = 8, new_tokens: int = 16, seed: int = 0) -> Verification:
    """Compare the transformers model in `folder` with `reference` (our model holding the exported weights, in
    fp32; for a bf16 export, weights rounded to bf16)."""
    start = time.perf_counter()
    hf = load_with_transformers(folder)
    cfg = reference.cfg
    seq_len = min(seq_len, cfg.max_seq_len)
    prompt_len = min(prompt_len, cfg.max_seq_len // 2)
    new_tokens = min(new_tokens, cfg.max_seq_len - prompt_len)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=gen)
    diff = (reference(tokens) - hf(tokens).logits).abs().max().item()

    prompt = tokens[:1, :prompt_len]
    ours = greedy(reference, prompt, new_tokens)
    # min_new_tokens would mask EOS and change the argmax: disable stopping instead, so both sides run to the end.
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=new_tokens,
                         eos_token_id=None, pad_token_id=0)
    same = theirs.shape == ours.shape and torch.equal(theirs, ours)
    return Verification(diff, same, batch * seq_len, new_tokens, time.perf_counter() - start)
