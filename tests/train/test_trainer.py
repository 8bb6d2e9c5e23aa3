"""One rank, in this process: the run directory, checkpoints, TensorBoard, and the errors raised before
training starts."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, tiny_overrides
from mixln_dist.checkpoint import CheckpointError, resolve
from mixln_dist.config import ConfigError, compose
from mixln_dist.data import DataError


def fit(env, *overrides):
    from mixln_dist.train.trainer import Trainer

    trainer = Trainer(compose(list(overrides)), env, log=lambda *a, **k: None)
    summary = trainer.fit()
    trainer.close()
    return summary


def test_run_directory_checkpoints_and_tensorboard(env, tiny_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = fit(env, *tiny_overrides(tiny_dataset, tmp_path, "train.steps=6", "train.save_interval=2",
                                       "train.keep_last=2", "train.eval_interval=3", "train.diag_interval=2"))
    run = tmp_path / "debug-mix0.25"
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_0000004", "step_0000006"]  # keep_last=2
    assert (ckpts / "latest").read_text() == "step_0000006"
    state = json.loads((ckpts / "step_0000006" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["parts"]["progress"] == {"step": 6, "tokens_seen": 6 * 4 * 64}
    assert state["parts"]["loader"]["consumed"] == 6 * 4 and state["world_size"] == 1
    rank_state = torch.load(ckpts / "step_0000006" / "rank0.pt", weights_only=True)  # plain data: no pickled code
    assert set(rank_state) == {"random"}
    assert compose(tiny_overrides(tiny_dataset, tmp_path, "train.steps=6", "train.save_interval=2", "train.keep_last=2",
                                  "train.eval_interval=3", "train.diag_interval=2")) == resolve(run).config()
    assert [e["step"] for e in summary["evals"]] == [0, 3, 6]

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/loss", "eval/perplexity",
                "grad_norm/total", "grad_norm/embed", "grad_norm/head", "grad_norm/layer0", "grad_norm/layer3.attn",
                "grad_norm/layer3.mlp", "grad_norm/layer3.norm"}
    assert expected <= tags, expected - tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("grad_norm/total")] == [2, 4, 6]
    norms = [json.loads(line) for line in (run / "diagnostics" / "grad_norms.jsonl").read_text().splitlines()]
    assert [n["step"] for n in norms] == [2, 4, 6] and all(n["layer0"] > 0 for n in norms)


def test_an_interrupted_save_is_never_resumed_from(env, tiny_dataset, tmp_path):
    base = tiny_overrides(tiny_dataset, tmp_path, "train.steps=4", "train.save_interval=2", "train.eval_interval=100")
    fit(env, *base, "train.stop_at=2")
    ckpts = tmp_path / "debug-mix0.25" / "checkpoints"
    # A crash mid-save of step 4: DeepSpeed's files exist, our completion marker does not.
    shutil.copytree(ckpts / "step_0000002", ckpts / "step_0000004", ignore=shutil.ignore_patterns("trainer_state.json"))
    assert resolve(tmp_path / "debug-mix0.25").tag == "step_0000002"
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve(ckpts / "step_0000004")
    summary = fit(env, *base)
    assert [h["step"] for h in summary["train"]] == [3, 4]
    assert resolve(tmp_path / "debug-mix0.25").tag == "step_0000004"


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["train.global_batch_size=6"], ConfigError, r"global_batch_size=6 is not a multiple of .* = 4"),
        (["model.vocab_size=300"], DataError, r"512.*model.vocab_size=300"),
        (["train.precision=bf16", "zero.stage=0"], ConfigError, "needs zero.stage>=1"),
        (["model.max_seq_len=4000000", "data.seq_len=3000000"], DataError, "seq_len"),
    ],
)
def test_bad_runs_fail_before_training(env, tiny_dataset, tmp_path, extra, error, message):
    from mixln_dist.train.trainer import Trainer

    with pytest.raises(error, match=message):
        Trainer(compose(tiny_overrides(tiny_dataset, tmp_path, *extra)), env)
    assert not (tmp_path / "debug-mix0.25").exists()


def test_resuming_with_a_changed_model_is_refused(env, tiny_dataset, tmp_path):
    from mixln_dist.train.trainer import Trainer

    # The default run name follows model and scheme; pin it so that both runs share one directory.
    base = tiny_overrides(tiny_dataset, tmp_path, "train.steps=2", "train.eval_interval=100", "train.run_name=run")
    fit(env, *base)
    with pytest.raises(CheckpointError, match=r"model.n_layers: 4 -> 2"):
        Trainer(compose([*base, "model.n_layers=2", "train.steps=4"]), env)
    with pytest.raises(CheckpointError, match=r"norm.scheme: 'mix' -> 'pre'"):
        Trainer(compose([*base, "norm=pre", "train.steps=4"]), env)
    with pytest.raises(CheckpointError, match=r"data.seq_len: 64 -> 32"):
        Trainer(compose([*base, "data.seq_len=32", "train.steps=4"]), env)
    with pytest.raises(CheckpointError, match="already holds a run"):
        Trainer(compose([*base, "train.resume=never"]), env)


def test_pretrain_cli_reports_config_errors_before_starting():
    proc = subprocess.run([sys.executable, "launch/pretrain.py", "optim.lrr=1"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "did you mean 'optim.lr'" in proc.stderr
    help_text = subprocess.run([sys.executable, "launch/pretrain.py", "--help"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=60).stdout
    assert "deepspeed" in help_text and "llama_1b" in help_text
