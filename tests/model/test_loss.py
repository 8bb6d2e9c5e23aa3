"""The chunked cross-entropy is the plain one (F.cross_entropy over the full fp32 logits) within fp32 rounding,
loss and gradients, and a training step with it holds far less memory."""

import pytest
import torch
import torch.nn.functional as F

from mixln_dist.config import compose
from mixln_dist.memory import PeakMemory
from mixln_dist.model import ModelConfig, NormConfig, Transformer, build_model
from mixln_dist.model.loss import LMHead, chunked_cross_entropy


def plain_loss(h, weight, targets, reduction="mean"):
    logits = (h @ weight.T).float()
    loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss


def loss_and_grads(fn, h, weight, targets, **kw):
    h, weight = h.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = fn(h, weight, targets, **kw)
    loss.backward()
    return loss.detach(), h.grad, weight.grad


# (tokens as (B, T), dim, vocab, chunk): chunks that divide the tokens, that do not, one token per chunk, and one
# chunk for everything.
SHAPES = [((4, 64), 32, 500, 64), ((3, 50), 48, 1000, 37), ((2, 9), 16, 64, 1), ((2, 33), 16, 300, 0)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0][0]}x{s[0][1]}-d{s[1]}-v{s[2]}-c{s[3]}")
def test_equals_the_plain_loss_and_its_gradients(shape):
    (b, t), dim, vocab, chunk = shape
    torch.manual_seed(0)
    h, weight = torch.randn(b, t, dim), torch.randn(vocab, dim) / dim**0.5
    targets = torch.randint(0, vocab, (b, t))
    expected = loss_and_grads(plain_loss, h, weight, targets)
    got = loss_and_grads(chunked_cross_entropy, h, weight, targets, chunk_tokens=chunk)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    per_token = chunked_cross_entropy(h, weight, targets, reduction="none", chunk_tokens=chunk)
    torch.testing.assert_close(per_token, plain_loss(h, weight, targets, "none"), rtol=1e-5, atol=1e-6)


def test_bf16_is_as_accurate_as_the_plain_loss():
    # Both take bf16 hidden states and weights to bf16 logits, then the softmax in fp32 and bf16 gradients. The
    # gradients round differently (the chunked weight gradient is a sum of per-chunk products), so each is
    # compared with the exact gradient of the same bf16 inputs (fp64): the chunked one must be as close.
    torch.manual_seed(0)
    h, weight = torch.randn(4, 40, 64).bfloat16(), (torch.randn(700, 64) / 8).bfloat16()
    targets = torch.randint(0, 700, (4, 40))
    exact = loss_and_grads(plain_loss, h.double(), weight.double(), targets)
    plain = loss_and_grads(plain_loss, h, weight, targets)
    chunked = loss_and_grads(chunked_cross_entropy, h, weight, targets, chunk_tokens=24)
    assert chunked[0].dtype == torch.float32 and chunked[1].dtype == chunked[2].dtype == torch.bfloat16
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-6, atol=1e-6)  # the same bf16 logits
    for name, e, p, c in zip(("loss", "hidden", "weight"), exact, plain, chunked):
        plain_err, chunked_err = ((x.double() - e).norm() / e.norm() for x in (p, c))
        assert chunked_err <= 1.5 * plain_err + 1e-7, f"{name}: {chunked_err:.2e} against {plain_err:.2e}"


def test_no_gradient_work_without_autograd():
    torch.manual_seed(0)
    head = LMHead(16, 100)
    h, targets = torch.randn(2, 8, 16, requires_grad=True), torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        loss = head(h, targets)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, plain_loss(h, head.weight, targets), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm", ["mix", "peri"])
def test_the_model_loss_equals_the_plain_loss_over_its_logits(norm):
    torch.manual_seed(0)
    cfg = ModelConfig(name="t", dim=64, n_layers=3, n_heads=4, ffn_dim=172, vocab_size=900, max_seq_len=64,
                      tie_embeddings=norm == "peri")
    model = Transformer(cfg, NormConfig(scheme=norm))
    model.init_weights()
    tokens = torch.randint(0, cfg.vocab_size, (3, 41))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    F.cross_entropy(model(inputs).float().flatten(0, 1), targets.flatten()).backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss = model(inputs, targets=targets)
    loss.backward()
    with torch.no_grad():
        torch.testing.assert_close(loss, F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_training_step_holds_far_less_memory():
    """The default job's step (16 x 256 tokens, vocabulary 8192): the plain loss keeps 134 MB logits, their
    log-softmax and the gradients of both; the chunked one none of them."""
    torch.manual_seed(0)
    cfg = compose([])
    model = build_model(cfg.model, cfg.norm)
    tokens = torch.randint(0, cfg.model.vocab_size, (16, 257))
    peaks = {}
    for mode in ("plain", "chunked"):
        model.zero_grad(set_to_none=True)
        with PeakMemory(torch.device("cpu")) as mem:
            if mode == "plain":
                logits = model(tokens[:, :-1])
                F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten()).backward()
                del logits
            else:
                model(tokens[:, :-1], targets=tokens[:, 1:]).backward()
        peaks[mode] = mem.peak_bytes
    logits_bytes = 16 * 256 * cfg.model.vocab_size * 4
    print({k: f"{v / 2**20:.0f} MiB" for k, v in peaks.items()})
    assert peaks["plain"] - peaks["chunked"] > 2 * logits_bytes
