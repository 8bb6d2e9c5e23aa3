"""The LM head and its cross-entropy, computed a chunk of tokens at a time so the full fp32 logits never exist.

The plain loss, `F.cross_entropy(head(h).float(), targets)`, holds the (tokens, vocab) logits in fp32 several
times over: the logits, their log-softmax, and in backward the gradient of each (134 MB per copy for the default
job, about 2 GB per micro-batch of 16 x 1024 tokens at vocabulary 32k). Here each chunk's logits live only while
that chunk is processed, and the backward is folded into the forward: knowing the loss is a mean, the gradient of
a chunk's logits is (softmax - onehot) / N, which is turned at once into that chunk's share of the gradients of
the hidden states and of the head's weight. Backward then only scales the two saved gradients by the incoming
one. The matrix products are the plain loss's three (logits, grad_hidden, grad_weight), so nothing is recomputed;
what goes is the traffic over the logits, and their memory.

The head stays an nn.Linear (same parameter name, same state dict, exports unchanged). The chunked loss runs in
its forward, so hooks on the module (ZeRO-3 gathering a partitioned weight) fire around it as around a plain
projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def default_chunk(vocab_size: int, device: torch.device) -> int:
    """Tokens per chunk. Each chunk adds its rank-`chunk` update to the fp32 weight gradient (vocab x dim), so a
    chunk must be long enough for that product to be compute-bound rather than a pass over the gradient's memory:
    256 tokens at least on a CPU (measured: 128 is 20% slower at vocabulary 32k, 1024 20% slower at 8k, where the
    chunk's logits no longer stay in cache; docs/benchmarks.md), and on a GPU chunks of 2^27 logits (512 MB in
    fp32: four chunks for 16 x 1024 tokens at vocabulary 32k, against about 2 GB per copy for the plain loss)."""
    if device.type == "cpu":
        return max(256, 2**21 // vocab_size)
    return max(1024, 2**27 // vocab_size)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i @ w.T, t_i) for h (N, D), w (V, D), t (N,); gradients computed during the forward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int,
                grad_enabled: bool) -> torch.Tensor:
        n = h.shape[0]
        # needs_input_grad says whether an input requires grad even under no_grad, where no backward will come.
        need_h, need_w = (grad_enabled and needed for needed in ctx.needs_input_grad[:2])
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        # fp32 accumulation over chunks whatever the weight's dtype, rounded to it once at the end. Not zeroed:
        # the first chunk's product overwrites it (beta=0 ignores what is there), sparing a pass over vocab x dim.
        grad_w = torch.empty(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        for start in range(0, n, chunk):
            end = start + chunk
            total -= _chunk(h[start:end], w, targets[start:end], grad_h[start:end] if need_h else None, grad_w,
                            first=start == 0)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.w_dtype, ctx.n = w.dtype, n
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.n  # the mean's 1/N and the incoming gradient, one scalar
        dh = grad_h * scale.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * scale).to(ctx.w_dtype) if grad_w is not None else None
        return dh, dw, None, None, None


def _chunk(hc: torch.Tensor, w: torch.Tensor, tc: torch.Tensor, grad_h: torch.Tensor | None,
           grad_w: torch.Tensor | None, first: bool) -> torch.Tensor:
    """One chunk of tokens: returns the sum of its targets' log-probabilities; writes its share of the gradients
    of the summed loss into grad_h (its rows) and adds it to grad_w (overwrites, for the first chunk). A function
    so that the chunk's logits are freed when it returns, before the next chunk's exist."""
    # log_softmax is one row-wise kernel: the chunk's logits are read once and written once.
    logp = torch.log_softmax((hc @ w.T).float(), dim=-1)  # (n_c, V)
    picked = logp.gather(1, tc[:, None]).sum()
    if grad_h is None and grad_w is None:
        return picked
    # d(sum CE)/d logits = softmax - onehot, formed in place; the 1/N of the mean is applied in backward, to the
    # (tokens, dim) and (vocab, dim) results, instead of as one more pass over the logits.
    probs = logp.exp_()
    probs.scatter_add_(1, tc[:, None], torch.full((tc.shape[0], 1), -1.0, device=probs.device))
    g = probs.to(hc.dtype)
    del logp, probs  # in bf16, g is a copy: the fp32 one goes before the products
    if grad_h is not None:
        torch.matmul(g, w, out=grad_h)
    if grad_w is None:
        return picked
    if grad_w.dtype == g.dtype:
        grad_w.addmm_(g.T, hc, beta=0 if first else 1)
        return picked
    # bf16 products summed in fp32 (out_dtype is a CUDA-only overload)
    product = torch.mm(g.T, hc, out_dtype=torch.float32) if g.is_cuda else (g.T @ hc).float()
    if first:
        grad_w.copy_(product)
    else:
        grad_w.add_(product)
    return picked


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          reduction: str = "mean", chunk_tokens: int = 0) -> torch.Tensor:
    """Cross-entropy (nats, fp32) of the logits h @ weight.T against targets, for h (..., D) and targets (...):
    their mean ("mean", differentiable), or each target's, shaped like targets ("none", for evaluation: it is
    not meant for backward, which would keep every chunk's logits). Equal to the plain loss within fp32 rounding
    (tests/model/test_loss.py)."""
    flat_h, flat_t = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    chunk = chunk_tokens or default_chunk(weight.shape[0], h.device)
    if reduction == "mean":
        return _ChunkedCrossEntropy.apply(flat_h, weight, flat_t, chunk, torch.is_grad_enabled())
    if reduction != "none":
        raise ValueError(f"reduction={reduction!r}: the chunked loss computes 'mean' or 'none'")
    losses = [F.cross_entropy((flat_h[s:s + chunk] @ weight.T).float(), flat_t[s:s + chunk], reduction="none")
              for s in range(0, flat_t.shape[0], chunk)]
    return torch.cat(losses).view(targets.shape)


class LMHead(nn.Linear):
    """The output projection (dim -> vocab, no bias). Called with hidden states only it returns the logits; with
    targets, their cross-entropy, chunked (chunked_cross_entropy)."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__(dim, vocab_size, bias=False)

    def forward(self, h: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        if targets is None:
            return super().forward(h)
        return chunked_cross_entropy(h, self.weight, targets, reduction)
