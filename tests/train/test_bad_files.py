"""Damaged, planted and contested files: one run per directory, damaged checkpoints reported by name with the
previous one offered (and used by train.resume=auto after a warning, nothing deleted), pickles that would run
code refused everywhere a checkpoint is read, and the early checks that fail before any work."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, tiny_overrides
from mixln_dist.checkpoint import resolve
from mixln_dist.config import compose
from mixln_dist.errors import EXIT_USER_ERROR, CheckpointError, DataError, RunError

from .helpers import child_env, free_port

FAST = ("train.eval_interval=100", "train.log_interval=1")


def trainer(env, *overrides, lines=None):
    from mixln_dist.train.trainer import Trainer

    log = (lambda *a, **k: lines.append(" ".join(map(str, a)))) if lines is not None else (lambda *a, **k: None)
    return Trainer(compose(list(overrides)), env, log=log)


def fit(env, *overrides, lines=None):
    t = trainer(env, *overrides, lines=lines)
    try:
        return t.fit()
    finally:
        t.close()


@pytest.fixture
def two_checkpoints(env, tiny_dataset, tmp_path):
    """A finished 4-step ZeRO-2 run with checkpoints at steps 2 and 4."""
    base = tiny_overrides(tiny_dataset, tmp_path, *FAST, "train.steps=4", "train.save_interval=2", "train.run_name=r")
    fit(env, *base)
    return base, tmp_path / "r" / "checkpoints"


# One run per directory -------------------------------------------------------------------------------------------


def test_a_second_run_in_the_same_directory_is_refused_and_a_stale_lock_taken_over(env, tiny_dataset, tmp_path):
    base = tiny_overrides(tiny_dataset, tmp_path, *FAST, "train.steps=2", "train.run_name=r")
    first = trainer(env, *base)
    try:
        with pytest.raises(RunError, match=rf"in use by a running training job \(pid {os.getpid()} on host"):
            trainer(env, *base)
        proc = subprocess.run([sys.executable, "launch/pretrain.py", *base], cwd=REPO_ROOT, env=child_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == EXIT_USER_ERROR and "is in use by a running training job" in proc.stderr
    finally:
        first.close()
    # A lock file naming a process that is gone is no obstacle (the kernel dropped its lock with it).
    (tmp_path / "r" / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 999999, "started": "yesterday"}))
    lines = []
    fit(env, *base, lines=lines)
    assert any("taking over the lock" in line and "pid 999999 on host elsewhere" in line for line in lines)


def test_an_unwritable_output_folder_fails_before_any_work(env, tiny_dataset, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(RunError, match="cannot create the run directory .* choose a writable train.out_dir"):
        trainer(env, *tiny_overrides(tiny_dataset, blocker / "runs", *FAST))


# Damaged checkpoints ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                    "trainer_state.json", "config.yaml", "rank0.pt"])
def test_a_damaged_checkpoint_is_named_and_the_previous_one_used(victim, env, two_checkpoints):
    base, ckpts = two_checkpoints
    path = ckpts / "step_0000004" / victim
    if path.suffix == ".pt":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    else:
        path.write_text("{ this is : [ not what was written")
    with pytest.raises(CheckpointError, match=rf"step_0000004.*damaged.*newest undamaged one before it is .*step_0000002"):
        resolve(ckpts.parent)
    lines = []
    summary = fit(env, *base, "train.steps=6", lines=lines)
    assert any(line.startswith("WARNING: checkpoint") and "step_0000004 is damaged" in line for line in lines), lines
    assert any("resumed from" in line and "step_0000002" in line for line in lines)
    assert [h["step"] for h in summary["train"]] == [3, 4, 5, 6]
    assert (ckpts / "step_0000004.damaged" / victim).exists()  # kept aside, not deleted


def test_damaged_checkpoints_are_reported_by_the_entry_points(two_checkpoints, capsys):
    from mixln_dist.cli import evaluate, export_hf

    _, ckpts = two_checkpoints
    state = ckpts / "step_0000004" / "trainer_state.json"
    state.write_text("garbage")
    for entry, argv in ((evaluate, [str(ckpts.parent), "--shards"]),
                        (export_hf, [str(ckpts.parent), str(ckpts.parent / "hf")])):
        assert entry.main(argv) == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "trainer_state.json is damaged" in err[0] and "step_0000002" in err[0], err


# Files that would run code ---------------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs code: it creates the file named by `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def plant(path: Path, payload: dict) -> None:
    """Replace a checkpoint file with a well-formed torch file whose pickle runs code, as an attacker who can
    write the folder would (the size record in trainer_state.json is updated too, so only the pickle is wrong)."""
    import torch

    torch.save(payload, path)
    state_file = path.parent / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["files"][path.name] = path.stat().st_size
    state_file.write_text(json.dumps(state))


def test_a_planted_pickle_is_refused_on_resume(env, two_checkpoints, tmp_path):
    base, ckpts = two_checkpoints
    marker = tmp_path / "code_ran"
    plant(ckpts / "step_0000004" / "rank0.pt", {"random": Payload(marker)})
    with pytest.raises(CheckpointError, match="rank0.pt: holds Python objects that are not plain data"):
        fit(env, *base, "train.steps=6")
    assert not marker.exists()
    plant(ckpts / "step_0000004" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", {"x": Payload(marker)})
    with pytest.raises(CheckpointError, match="step_0000004: holds Python objects that are not plain data"):
        fit(env, *base, "train.steps=6")
    assert not marker.exists()


def test_a_planted_pickle_is_refused_by_export_evaluate_and_init_from(env, tiny_dataset, tmp_path, capsys):
    """A ZeRO-0 checkpoint whose model states are a zip-format torch file that pickles code."""
    from mixln_dist.cli import evaluate, export_hf

    base = tiny_overrides(tiny_dataset, tmp_path, *FAST, "train.steps=2", "zero.stage=0", "train.run_name=z0")
    fit(env, *base)
    ckpt = tmp_path / "z0" / "checkpoints" / "step_0000002"
    marker = tmp_path / "code_ran"
    plant(ckpt / "mp_rank_00_model_states.pt", {"module": Payload(marker)})
    for entry, argv in ((evaluate, [str(ckpt), "--shards"]), (export_hf, [str(ckpt), str(tmp_path / "hf")])):
        assert entry.main(argv) == EXIT_USER_ERROR
        assert "not plain data" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not plain data"):
        fit(env, *tiny_overrides(tiny_dataset, tmp_path, *FAST, "train.steps=1", "train.run_name=warm",
                                 f"train.init_from={ckpt}"))
    assert not marker.exists()


# Early checks ----------------------------------------------------------------------------------------------------


def test_a_taken_port_is_named_with_the_fix(tiny_dataset, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**child_env(), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        proc = subprocess.run([sys.executable, "launch/pretrain.py", *tiny_overrides(tiny_dataset, tmp_path)],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-2000:]
    assert f"the rendezvous port 127.0.0.1:{port} is taken" in proc.stderr and "--master_port" in proc.stderr


def test_stop_at_not_after_the_checkpoint_is_refused_and_a_changed_lr_applies(env, two_checkpoints):
    from mixln_dist.config import ConfigError
    from mixln_dist.train.optim import lr_factor

    base, _ = two_checkpoints
    with pytest.raises(ConfigError, match="train.stop_at=4 is not after the checkpoint's step 4"):
        trainer(env, *base, "train.steps=8", "train.stop_at=4")
    lines = []
    summary = fit(env, *base, "train.steps=6", "optim.lr=2e-3", lines=lines)
    assert any("changed since the checkpoint (applied)" in line and "optim.lr 0.001 -> 0.002" in line for line in lines)
    cfg = compose([*base, "train.steps=6", "optim.lr=2e-3"])
    assert summary["train"][0]["lr"] == pytest.approx(2e-3 * lr_factor(cfg.optim, 6)(4))


def test_token_ids_beyond_the_vocabulary_are_caught_when_read(tiny_dataset, tmp_path):
    import shutil

    import numpy as np

    from mixln_dist.data import TrainLoader
    from mixln_dist.data.meta import DatasetMeta

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    shard = DatasetMeta.load(data).splits["train"].shards[0]
    ids = np.memmap(data / shard.file, dtype="<u2", mode="r+")
    ids[12345] = 60000  # outside the spot-checked blocks: check_dataset cannot see it
    ids.flush()
    del ids
    loader = TrainLoader(data, 64, 4, 0, 1, seed=1, vocab_size=512)
    with pytest.raises(DataError, match=r"in train-00000.bin\) holds token id 60000, but model.vocab_size is 512"):
        for _ in range(loader.num_samples // 4):
            loader.next_batch()
