#!/usr/bin/env python
"""The cost of per-layer gradient-norm logging (train.diag_interval), measured directly: the time of one
collection (DeepSpeed's full-gradient accessor for every parameter, grouped per layer) against the time of one
training step, so the overhead at interval k is collection / (k x step), free of run-to-run noise.

    python bench/grad_norm_overhead.py                                    # default model, 1 rank, ZeRO-2
    torchrun --nproc_per_node 2 bench/grad_norm_overhead.py zero.stage=3  # 2 ranks: a gather per parameter
    python bench/grad_norm_overhead.py model=llama_71m data.seq_len=256 train.micro_batch_size=4

Extra arguments are the trainer's config overrides. Runs in a scratch directory; the data is the config's.
"""

from __future__ import annotations

import sys
import tempfile
import time

from mixln_dist.config import compose
from mixln_dist.evaluation import next_token_loss
from mixln_dist.grad_norms import engine_grad_norms
from mixln_dist.train.distributed import init_distributed, shutdown
from mixln_dist.train.trainer import Trainer


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        cfg = compose([*sys.argv[1:], f"train.out_dir={scratch}", "train.progress_bar=false", "train.resume=never"])
        env = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
        trainer = Trainer(cfg, env, log=lambda *a, **k: None)
        timed(trainer.train_step, 5)  # warm-up
        step = timed(trainer.train_step, 30)
        # Gradients of a fresh batch, left in place (no optimizer step), read repeatedly.
        for micro in trainer.loader.next_batch().to(env.device).split(trainer.batch.micro_batch_size):
            trainer.engine.backward(next_token_loss(trainer.engine, micro))
        collect = timed(lambda: engine_grad_norms(trainer.engine), 20)
        if env.is_main:
            print(f"{cfg.model.name}, ZeRO-{cfg.zero.stage}, {env.world_size} rank(s): step {1000 * step:.1f} ms, "
                  f"one collection {1000 * collect:.2f} ms")
            for k in (1, 10, 100):
                print(f"  train.diag_interval={k:<4} overhead {100 * collect / (k * step):.2f}% of step time")
        trainer.close()
    shutdown()


if __name__ == "__main__":
    main()
