"""The step's fast paths change no result: torch's fused AdamW takes the foreach update's place (and its
checkpoints), and ZeRO-0 on one rank skips an all-reduce that would change no bit."""

import copy

import pytest
import torch

from mixln_dist.config import compose
from mixln_dist.model import ModelConfig, NormConfig, build_model
from mixln_dist.train.optim import build_optimizer, param_groups

CFG = ModelConfig(name="t", dim=32, n_layers=2, n_heads=2, ffn_dim=64, vocab_size=128, max_seq_len=32)


def model_and_batch():
    torch.manual_seed(0)
    return build_model(CFG, NormConfig(scheme="mix", alpha=0.5)), torch.randint(0, CFG.vocab_size, (4, 17))


def train(model, optimizer, tokens, steps):
    for _ in range(steps):
        model(tokens[:, :-1], targets=tokens[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def foreach_adamw(model, cfg):
    """The update torch's AdamW makes with its multi-tensor kernels, on the same parameter groups."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             foreach=True)


def test_the_optimizer_is_torchs_fused_adamw_and_updates_as_the_foreach_one():
    cfg = compose([]).optim
    model, tokens = model_and_batch()
    reference = copy.deepcopy(model)
    fused = build_optimizer(model, cfg, "torch")
    assert fused.defaults["fused"] is True
    train(model, fused, tokens, 3)
    train(reference, foreach_adamw(reference, cfg), tokens, 3)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)


def test_a_checkpoint_of_another_kernel_resumes_on_the_fused_one():
    cfg = compose([]).optim
    model, tokens = model_and_batch()
    older = foreach_adamw(model, cfg)
    train(model, older, tokens, 2)
    resumed = build_optimizer(model, cfg, "torch")
    saved = older.state_dict()  # its groups say foreach=True, fused=None
    resumed.load_state_dict(copy.deepcopy(saved))  # copies: loading keeps the very tensors it is given
    assert all(g["fused"] is True and g["foreach"] is None for g in resumed.param_groups)
    reference = copy.deepcopy(model)
    continued = foreach_adamw(reference, cfg)
    continued.load_state_dict(copy.deepcopy(saved))
    train(model, resumed, tokens, 2)
    train(reference, continued, tokens, 2)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("stage", [0, 2])
def test_zero0_on_one_rank_skips_the_all_reduce_and_no_bit_changes(env, stage):
    import deepspeed

    from mixln_dist.train.engine import skip_lone_allreduce

    def engine(skip):
        model, tokens = model_and_batch()
        config = {"train_batch_size": 4, "gradient_clipping": 1.0, "zero_optimization": {"stage": stage},
                  "zero_allow_untested_optimizer": True}
        built, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                                         config=config, dist_init_required=False)
        if skip:
            skip_lone_allreduce(built)
        for _ in range(3):
            built.backward(built(tokens[:, :-1], targets=tokens[:, 1:]))
            built.step()
        return built

    plain, skipped = engine(False), engine(True)
    assert skipped.enable_backward_allreduce is (stage != 0)  # ZeRO 1-3 reduce in their optimizer: left alone
    for (name, p), q in zip(plain.module.named_parameters(), skipped.module.parameters()):
        assert torch.equal(p, q), name
