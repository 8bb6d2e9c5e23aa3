"""Runs a list of training jobs inside one process group (launched by torchrun or as a single process), so
that many configurations cost one process start. Used by the distributed tests.

    torchrun --nproc_per_node 2 tests/train/worker.py JOBS.json OUT_DIR

Each job is {"name": ..., "overrides": [...], "action": "fit" | "grads" | "grad_norms"}, optionally with
"faults": {"nan_loss": [steps], "nan_grad": [steps], "ranks": [ranks]} (the forward of the first decoder layer
turns non-finite on those steps, on those ranks: the loss itself, or only the gradient flowing back); each rank
writes OUT_DIR/<name>.rank<r>.json with what the job produced.
"""

import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def run_fit(cfg, env, faults=None):
    from mixln_dist.train.trainer import Trainer

    lines = []
    trainer = Trainer(cfg, env, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    if faults:
        inject(trainer, env, faults)
    try:
        summary = trainer.fit()
    except Exception as e:
        trainer.close()
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(), "log": lines}
    params = full_param_sums(trainer.engine)
    guard = trainer.guard.state_dict()
    loader = trainer.loader.state_dict()
    trainer.close()
    return {"train": summary["train"], "evals": summary["evals"], "param_sums": params, "guard": guard,
            "loader": loader, "state": summary["state"], "log": lines}


def inject(trainer, env, faults):
    """Real non-finite numbers flowing through the real engine, on chosen steps and ranks."""
    nan_loss, nan_grad = set(faults.get("nan_loss", [])), set(faults.get("nan_grad", []))
    ranks = set(faults.get("ranks", [0, 1]))

    def hook(module, inputs, output):
        step = trainer.progress.step + 1  # the step being computed
        if env.rank not in ranks or not module.training:
            return output
        if step in nan_loss:
            return output * float("nan")
        if step in nan_grad:
            output.register_hook(lambda grad: grad * float("nan"))
        return output

    trainer.engine.module.layers[0].register_forward_hook(hook)


def full_param_sums(engine):
    """Checksums of the full parameters (gathered under ZeRO-3, where each rank holds a shard)."""
    import deepspeed

    params = list(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=engine.zero_optimization_stage() == 3):
        return {n: p.detach().double().sum().item() for n, p in params}


def run_grad_norms(cfg, env):
    """Per-layer gradient norms of the first global batch, read through DeepSpeed's full-gradient accessor."""
    from mixln_dist.evaluation import next_token_loss
    from mixln_dist.grad_norms import engine_grad_norms
    from mixln_dist.train.trainer import Trainer

    trainer = Trainer(cfg, env, log=lambda *a, **k: None)
    batch = trainer.loader.next_batch()
    for micro in batch.split(trainer.batch.micro_batch_size):
        trainer.engine.backward(next_token_loss(trainer.engine, micro))
    norms = engine_grad_norms(trainer.engine)
    trainer.close()
    return {"norms": norms}


def run_grads(cfg, env):
    """Loss and full (unpartitioned) gradients of one global batch, before any optimizer step."""
    from deepspeed.utils import safe_get_full_grad

    from mixln_dist.evaluation import next_token_loss
    from mixln_dist.train.trainer import Trainer

    trainer = Trainer(cfg, env, log=lambda *a, **k: None)
    batch = trainer.loader.next_batch()
    losses = []
    for micro in batch.split(trainer.batch.micro_batch_size):
        loss = next_token_loss(trainer.engine, micro)
        trainer.engine.backward(loss)
        losses.append(loss.item())
    grads = {}
    for name, p in trainer.engine.module.named_parameters():
        g = safe_get_full_grad(p)  # collective under ZeRO-3
        grads[name] = g.float().flatten().tolist() if g is not None else None
    trainer.close()
    return {"losses": losses, "grads": grads}


def main():
    jobs = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    from mixln_dist.config import compose
    from mixln_dist.train.distributed import init_distributed, shutdown

    env = init_distributed("cpu", timeout_s=120)
    for job in jobs:
        cfg = compose(job["overrides"])
        try:
            action = {"fit": run_fit, "grads": run_grads, "grad_norms": run_grad_norms}[job.get("action", "fit")]
            result = action(cfg, env, job["faults"]) if "faults" in job else action(cfg, env)
        except Exception as e:  # recorded, not swallowed: the test asserts on it
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        (out / f"{job['name']}.rank{env.rank}.json").write_text(json.dumps(result))
    shutdown()


if __name__ == "__main__":
    main()
