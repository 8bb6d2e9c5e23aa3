"""Two real ranks on gloo: every ZeRO stage and precision trains, replicas agree, activation checkpointing is
exact under ZeRO-3, resume is exact, and a run resumed on another number of ranks continues the same curve."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, tiny_overrides
from .helpers import child_env, free_port, logged_losses, losses, run_jobs, torchrun


def job(name, data, out, *extra, action="fit"):
    return {"name": name, "action": action, "overrides": tiny_overrides(data, out, f"train.run_name={name}", *extra)}


def test_every_zero_stage_and_precision_trains_and_ranks_agree(tiny_dataset, tmp_path):
    common = ("train.steps=8", "optim.lr=3e-3", "train.eval_interval=8", "train.save_interval=100")
    jobs = [job(f"z{s}_{p}", tiny_dataset, tmp_path, f"zero.stage={s}", f"train.precision={p}", *common)
            for s in (1, 2, 3) for p in ("fp32", "bf16")]
    jobs.append(job("z3_init_fp32", tiny_dataset, tmp_path, "zero=stage3_init", *common))  # built partitioned
    results = run_jobs(jobs, tmp_path / "results")
    for name, (r0, r1) in results.items():
        first_eval, last_eval = r0["evals"][0]["loss"], r0["evals"][-1]["loss"]
        assert last_eval < first_eval - 0.1, f"{name}: validation loss {first_eval:.3f} -> {last_eval:.3f}"
        assert losses(r0) == losses(r1), f"{name}: ranks report different losses"
        assert [e["loss"] for e in r0["evals"]] == [e["loss"] for e in r1["evals"]]
        assert r0["param_sums"] == r1["param_sums"], f"{name}: the ranks' weights diverged"
    # fp32 ZeRO stages are the same optimizer on the same data: same curve up to summation order.
    reference = losses(results["z1_fp32"][0])
    for s in (2, 3):
        assert losses(results[f"z{s}_fp32"][0]) == pytest.approx(reference, abs=1e-5)
    # zero.Init builds the model already partitioned; rank 0 draws the same initial weights.
    assert losses(results["z3_init_fp32"][0]) == losses(results["z3_fp32"][0])
    for s in (1, 2, 3):  # bf16 tracks fp32 loosely
        assert losses(results[f"z{s}_bf16"][0]) == pytest.approx(reference, abs=0.05)


def test_activation_checkpointing_under_zero3_is_exact(tiny_dataset, tmp_path):
    jobs = [job(f"{ac}_{action}", tiny_dataset, tmp_path, "zero.stage=3", f"train.activation_checkpointing={ac}",
                "train.steps=4", "train.eval_interval=4", "train.save_interval=100", action=action)
            for ac in ("none", "full") for action in ("grads", "fit")]
    jobs.append(job("every_k_fit", tiny_dataset, tmp_path, "zero.stage=3", "train.activation_checkpointing=every_k",
                    "train.ac_every_k=2", "train.steps=4", "train.eval_interval=4", "train.save_interval=100"))
    results = run_jobs(jobs, tmp_path / "results")
    plain, ckpt = results["none_grads"][0], results["full_grads"][0]
    assert plain["losses"] == ckpt["losses"]
    for name, g in plain["grads"].items():
        assert torch.equal(torch.tensor(g), torch.tensor(ckpt["grads"][name])), f"gradient of {name} differs"
    assert losses(results["none_fit"][0]) == losses(results["full_fit"][0]) == losses(results["every_k_fit"][0])


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_is_exact_and_continues_on_another_world_size(stage, tiny_dataset, tmp_path):
    run = ("train.steps=6", "train.eval_interval=100", "train.save_interval=100", f"zero.stage={stage}")
    results = run_jobs([
        job("straight", tiny_dataset, tmp_path, *run),
        job("first_half", tiny_dataset, tmp_path, *run, "train.run_name=split", "train.stop_at=3"),
        job("second_half", tiny_dataset, tmp_path, *run, "train.run_name=split"),
        job("first_half_for_1_rank", tiny_dataset, tmp_path, *run, "train.run_name=reshard", "train.stop_at=3"),
    ], tmp_path / "two_ranks")
    straight = losses(results["straight"][0])
    assert losses(results["first_half"][0]) == straight[:3]
    assert losses(results["second_half"][0]) == straight[3:], "resume is not bitwise exact"

    one_rank = run_jobs([job("second_half_on_1_rank", tiny_dataset, tmp_path, *run, "train.run_name=reshard")],
                        tmp_path / "one_rank", nproc=1)
    # Same global batches (4 micro x 2 accumulation on 1 rank); only the summation order differs.
    assert losses(one_rank["second_half_on_1_rank"][0]) == pytest.approx(straight[3:], abs=1e-5)


@pytest.mark.parametrize("stage", [2, 3])
def test_per_layer_grad_norms_match_a_single_process(stage, tiny_dataset, tmp_path):
    from mixln_dist.config import compose
    from mixln_dist.data import TrainLoader
    from mixln_dist.grad_norms import model_grad_norms
    from mixln_dist.model import Transformer

    overrides = tiny_overrides(tiny_dataset, tmp_path, f"zero.stage={stage}", "train.run_name=norms", "train.steps=1")
    norms = run_jobs([{"name": "norms", "action": "grad_norms", "overrides": overrides}], tmp_path / "res")["norms"]
    assert norms[0]["norms"] == norms[1]["norms"]

    cfg = compose(overrides)
    model = Transformer(cfg.model, cfg.norm)
    torch.manual_seed(cfg.train.seed)
    model.init_weights()
    batch = TrainLoader(tiny_dataset, cfg.data.seq_len, 8, 0, 1, cfg.data.seed).next_batch()  # the global batch
    logits = model(batch[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).backward()
    reference = model_grad_norms(model)
    assert norms[0]["norms"].keys() == reference.keys()
    for key, value in reference.items():  # fp32 sums over 2 ranks vs 1: summation order only
        assert norms[0]["norms"][key] == pytest.approx(value, rel=1e-4, abs=1e-8), key


def test_launchers_and_a_relaunch_on_another_world_size(tiny_dataset, tmp_path):
    """`deepspeed` (2 ranks) stops at step 2; a fresh `python` process (1 rank) resumes to step 4; together they
    log the curve of one uninterrupted `torchrun` run."""
    args = tiny_overrides(tiny_dataset, tmp_path, "train.steps=4", "zero.stage=2", "train.eval_interval=100")
    deepspeed = Path(sys.executable).parent / "deepspeed"
    runs = [
        [deepspeed, "--num_gpus", "2", "--master_port", free_port(), "launch/pretrain.py", *args,
         "train.run_name=relaunch", "train.stop_at=2"],
        [sys.executable, "launch/pretrain.py", *args, "train.run_name=relaunch"],
    ]
    for cmd in runs:
        proc = subprocess.run(list(map(str, cmd)), env=child_env(), cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = torchrun(["launch/pretrain.py", *args, "train.run_name=straight"], nproc=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    relaunched, straight = logged_losses(tmp_path / "relaunch"), logged_losses(tmp_path / "straight")
    assert sorted(relaunched) == sorted(straight) == [1, 2, 3, 4]
    assert [relaunched[s] for s in (1, 2)] == [straight[s] for s in (1, 2)]
    assert [relaunched[s] for s in (3, 4)] == pytest.approx([straight[s] for s in (3, 4)], abs=1e-5)


def test_a_data_error_on_rank_0_stops_every_rank_at_once(tmp_path):
    """Only rank 0 prepares data; its failure must reach rank 1 instead of leaving it at a barrier."""
    overrides = tiny_overrides(tmp_path / "new_data", tmp_path, "data.auto_prepare=true",
                               f"data.train=[{tmp_path}/nowhere/*.txt]", "train.dist_timeout_s=600")
    results = run_jobs([{"name": "bad", "overrides": overrides}], tmp_path / "res", timeout=120, allow_errors=True)
    for rank, result in enumerate(results["bad"]):
        assert result["error"].startswith("NoInputFiles") or "DataError" in result["error"], (rank, result["error"])
        assert "nowhere" in result["error"]
