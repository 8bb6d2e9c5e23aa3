"""train.compile=true: compiled blocks (inductor's CPU backend, through gcc) compute the eager model's losses and
gradients within fp32 rounding, and train. Both behind `slow`: a cold inductor cache (a fresh CI machine) takes
45 s to compile even the smallest model on 2 loaded cores (4 s once cached)."""

import copy

import pytest
import torch

from conftest import tiny_overrides
from mixln_dist.config import compose
from mixln_dist.model import ModelConfig, NormConfig, build_model
from mixln_dist.train.compile import apply_compile


def train_losses(model, batches):
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for tokens in batches:
        loss = model(tokens[:, :-1], targets=tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones():
    # One block kind (Pre-LN), so a single compilation serves every layer.
    torch.manual_seed(0)
    cfg = ModelConfig(name="t", dim=32, n_layers=2, n_heads=2, ffn_dim=64, vocab_size=256, max_seq_len=32)
    eager = build_model(cfg, NormConfig(scheme="pre"))
    compiled = copy.deepcopy(eager)
    assert apply_compile(compiled) == 2
    batches = [torch.randint(0, cfg.vocab_size, (4, 33))] * 4  # one batch again and again: the loss must fall
    expected, got = train_losses(eager, batches), train_losses(compiled, batches)
    assert got == pytest.approx(expected, rel=1e-5)
    assert got[-1] < got[0]
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # names unchanged: checkpoints interoperate


@pytest.mark.slow
def test_trainer_with_compile_matches_eager(tiny_dataset, tmp_path):
    """The trainer's own path (ZeRO-2 engine, a Mix-LN model: two block kinds, training and evaluation)."""
    from mixln_dist.train.distributed import init_distributed
    from mixln_dist.train.trainer import Trainer

    env = init_distributed("cpu", timeout_s=120)
    summaries = {}
    for flag in ("false", "true"):
        cfg = compose(tiny_overrides(tiny_dataset, tmp_path / flag, "train.steps=4", "train.eval_interval=4",
                                     f"train.compile={flag}", "train.tensorboard=false"))
        trainer = Trainer(cfg, env, log=lambda *a, **k: None)
        summaries[flag] = trainer.fit()
        trainer.close()
    def losses(summary, kind):
        return [h["loss"] for h in summary[kind]]

    for kind in ("train", "evals"):
        assert losses(summaries["true"], kind) == pytest.approx(losses(summaries["false"], kind), rel=1e-5)
