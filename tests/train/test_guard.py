"""The divergence guard, with real non-finite numbers and a really poisoned batch flowing through real DeepSpeed
engines: a bad update is never applied (every ZeRO stage, 1 and 2 ranks), a run that keeps diverging stops
keeping its last good checkpoint, and a loss spike is skipped or rolled back."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_overrides
from mixln_dist.checkpoint import resolve
from mixln_dist.config import compose
from mixln_dist.data import DatasetMeta, TrainLoader
from mixln_dist.data.meta import sha256_file, spot_sha256

from .helpers import run_jobs
from .worker import inject

FAST = ("train.eval_interval=100", "train.save_interval=100")


def job(name, data, out, *extra, faults=None):
    spec = {"name": name, "overrides": tiny_overrides(data, out, f"train.run_name={name}", *FAST, *extra)}
    return {**spec, "faults": faults} if faults else spec


def test_a_non_finite_step_is_never_applied_on_any_zero_stage(tiny_dataset, tmp_path):
    """Step 4's update is discarded on both ranks, whether the loss is NaN on one rank or only the gradient
    flowing back is: the weights end exactly as after 3 steps, and training goes on."""
    jobs = []
    for stage in (0, 2, 3):
        common = (f"zero.stage={stage}", "train.steps=5")
        jobs += [job(f"z{stage}_three", tiny_dataset, tmp_path, *common, "train.stop_at=3"),
                 job(f"z{stage}_nan_loss", tiny_dataset, tmp_path, *common, "train.stop_at=4",
                     faults={"nan_loss": [4], "ranks": [1]}),
                 job(f"z{stage}_nan_grad", tiny_dataset, tmp_path, *common,
                     faults={"nan_grad": [4], "ranks": [0]})]
    results = run_jobs(jobs, tmp_path / "results")
    for stage in (0, 2, 3):
        three = results[f"z{stage}_three"][0]["param_sums"]
        for kind in ("nan_loss", "nan_grad"):
            r0, r1 = results[f"z{stage}_{kind}"]
            assert r0["guard"]["skipped"] == r1["guard"]["skipped"] == 1, (stage, kind)
            assert r0["train"][3]["skipped_steps"] == 1 and r0["train"][3]["tokens_seen"] == 4 * 8 * 64
        assert results[f"z{stage}_nan_loss"][0]["param_sums"] == three, f"ZeRO-{stage} applied a NaN-loss update"
        after = results[f"z{stage}_nan_grad"][0]
        assert after["state"] == "finished" and np.isfinite(after["train"][-1]["loss"])  # step 5 trained on


def test_a_run_that_keeps_diverging_stops_and_keeps_its_last_good_checkpoint(tiny_dataset, tmp_path):
    jobs = [job("diverges", tiny_dataset, tmp_path, "train.steps=10", "train.save_interval=1", "train.keep_last=2",
                "train.guard.max_bad_steps=3", faults={"nan_loss": list(range(3, 11))})]
    results = run_jobs(jobs, tmp_path / "results", allow_errors=True)
    for result in results["diverges"]:
        assert result["error"].startswith("DivergenceError") and "steps 3-5" in result["error"], result["error"]
    ref = resolve(tmp_path / "diverges")
    assert ref.step == 2  # the interval saves waited while updates were skipped
    assert sorted(p.name for p in ref.root.glob("step_*")) == ["step_0000001", "step_0000002"]


def poisoned(data: Path, out: Path, batch: int, seq_len: int, global_batch: int) -> Path:
    """A copy of the dataset whose global batch `batch` (step batch + 1) is made of token ids the corpus never
    uses: the trained model finds it very surprising, a loss spike. meta.json's checksums are updated."""
    shutil.copytree(data, out)
    meta = DatasetMeta.load(out)
    loader = TrainLoader(out, seq_len, global_batch, 0, 1, seed=1234)
    tokens = np.asarray(loader.stream.read(0, loader.stream.num_tokens))
    unused = np.flatnonzero(np.bincount(tokens, minlength=meta.vocab_size) == 0)
    assert len(unused) > 0
    shard = meta.splits["train"].shards[0]
    ids = np.memmap(out / shard.file, dtype=meta.np_dtype, mode="r+")
    for i in loader.samples_of(batch):
        ids[i * seq_len: i * seq_len + seq_len + 1] = np.resize(unused, seq_len + 1)
    ids.flush()
    del ids
    shard.sha256, shard.spot_sha256 = sha256_file(out / shard.file), spot_sha256(out / shard.file)
    meta.save(out)
    return out


SPIKY = ("optim.lr=1e-2", "train.guard.spike_window=6", "train.guard.spike_zscore=6", "train.steps=16")


@pytest.fixture(scope="module")
def spiky_data(tiny_dataset, tmp_path_factory):
    """Step 12's batch poisoned, for 1 rank (global batch 4) and 2 ranks (8)."""
    root = tmp_path_factory.mktemp("poisoned")
    return {g: poisoned(tiny_dataset, root / f"g{g}", batch=11, seq_len=64, global_batch=g) for g in (4, 8)}


def test_a_spike_is_skipped_like_any_discarded_update(spiky_data, tmp_path):
    """With spike_action=skip, the poisoned step's update is discarded: the run ends exactly where a run that
    discards that step on purpose (a NaN loss) does."""
    data = spiky_data[8]
    results = run_jobs([job("skip", data, tmp_path, *SPIKY, "train.guard.spike_action=skip"),
                        job("forced", data, tmp_path, *SPIKY, faults={"nan_loss": [12]}),
                        job("unguarded", data, tmp_path, *SPIKY)], tmp_path / "results")
    skip, forced, unguarded = (results[n][0] for n in ("skip", "forced", "unguarded"))
    assert skip["guard"]["spikes"] == 1 and skip["guard"]["skipped"] == 1
    assert any("step 12: update not applied: loss" in line and "standard deviations" in line for line in skip["log"])
    assert unguarded["train"][11]["loss"] > unguarded["train"][10]["loss"] + 3  # the poison is a real spike
    assert skip["param_sums"] == forced["param_sums"]
    assert results["skip"][1]["param_sums"] == skip["param_sums"]  # both ranks decided alike


def test_a_spike_rolls_back_to_the_checkpoint_and_skips_the_bad_data(spiky_data, tmp_path):
    from mixln_dist.train.distributed import init_distributed
    from mixln_dist.train.trainer import Trainer

    env = init_distributed("cpu", timeout_s=120)
    cfg = compose(tiny_overrides(spiky_data[4], tmp_path, *SPIKY, "train.save_interval=8", "train.eval_interval=100",
                                 "train.guard.spike_action=rollback", "train.guard.spike_lr_factor=0.5"))
    lines = []
    trainer = Trainer(cfg, env, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    summary = trainer.fit()
    guard, loader = trainer.guard.state_dict(), trainer.loader.state_dict()
    trainer.close()
    assert guard["rollbacks"] == 1 and guard["lr_scale"] == 0.5 and guard["spikes"] == 1
    assert any("step 12: rolled back to" in line and "skipping the 4 batches" in line for line in lines), lines
    assert summary["state"] == "finished" and summary["step"] == 16
    assert loader["consumed"] == (16 + 4) * 4  # steps 9-12's batches were skipped, never trained on
    steps = [h["step"] for h in summary["train"]]
    assert steps == list(range(1, 12)) + list(range(9, 17))  # steps 9-12 again, on later data
    again = {h["step"]: h for h in summary["train"][11:]}
    first = {h["step"]: h for h in summary["train"][:11]}
    assert again[9]["lr"] == pytest.approx(0.5 * first[9]["lr"])
    state = json.loads((tmp_path / cfg.train.run_name / "checkpoints" / "step_0000016" / "trainer_state.json")
                       .read_text())
    assert state["parts"]["guard"]["rollbacks"] == 1  # the guard's state is in every checkpoint


def test_a_guarded_run_resumes_exactly(tiny_dataset, tmp_path, monkeypatch):
    """The guard's window is a stateful part: stopping and resuming a watched run changes nothing."""
    from mixln_dist.train.distributed import init_distributed
    from mixln_dist.train.trainer import Trainer

    env = init_distributed("cpu", timeout_s=120)
    base = tiny_overrides(tiny_dataset, tmp_path, "train.steps=8", "train.guard.spike_action=skip",
                          "train.guard.spike_window=3", *FAST)

    def fit(*extra):
        trainer = Trainer(compose([*base, *extra]), env, log=lambda *a, **k: None)
        summary = trainer.fit()
        window = trainer.guard.state_dict()["window"]
        trainer.close()
        return summary, window

    straight, window = fit("train.run_name=straight")
    fit("train.run_name=resumed", "train.stop_at=4")
    resumed, resumed_window = fit("train.run_name=resumed")
    assert [h["loss"] for h in resumed["train"]] == [h["loss"] for h in straight["train"][4:]]
    assert resumed_window == window


def test_inject_is_a_real_fault(tiny_dataset, tmp_path):
    """The injection used above makes the real loss non-finite (a check on the test's own tool)."""
    import torch

    from mixln_dist.evaluation import next_token_loss
    from mixln_dist.train.distributed import init_distributed
    from mixln_dist.train.trainer import Trainer

    env = init_distributed("cpu", timeout_s=120)
    trainer = Trainer(compose(tiny_overrides(tiny_dataset, tmp_path, *FAST)), env, log=lambda *a, **k: None)
    inject(trainer, env, {"nan_loss": [1], "ranks": [0]})
    assert torch.isnan(next_token_loss(trainer.engine, trainer.loader.next_batch()))
    trainer.close()
