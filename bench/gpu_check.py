#!/usr/bin/env python
"""One GPU-check case (bench/gpu_check.sh runs them): a few real training steps of the composed config through
the trainer (no checkpoint written), and one JSON line: tokens/s, MFU, peak memory and the planner's prediction.

    python bench/gpu_check.py STEPS OVERRIDES...      # one rank; torchrun for more

The first step (allocation, kernel selection) is not timed. Peak memory is torch's: allocated (what the planner
predicts) and reserved by the caching allocator (what the GPU must hold); on the CPU, peak RSS.
"""

import json
import resource
import sys
import time


def main() -> int:
    import torch

    from mixln_dist.config import compose
    from mixln_dist.train.distributed import init_distributed
    from mixln_dist.train.memory_plan import plan_memory
    from mixln_dist.train.metrics import peak_flops
    from mixln_dist.train.trainer import Trainer

    steps, overrides = int(sys.argv[1]), sys.argv[2:]
    cfg = compose(overrides)
    env = init_distributed(cfg.train.device, timeout_s=cfg.train.dist_timeout_s)
    trainer = Trainer(cfg, env, log=lambda *a, **k: None)
    cuda = env.device.type == "cuda"
    times, losses = [], []
    for i in range(steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = trainer.train_step()
        losses.append(result.loss.item())  # synchronises
        times.append(time.perf_counter() - start)
        if i == 0 and cuda:
            torch.cuda.reset_peak_memory_stats()  # the rest is the steady state; the first holds lazy allocations
    timed = times[1:] or times
    tokens_per_s = trainer.tokens_per_step * len(timed) / sum(timed)
    peak = peak_flops(env.device, trainer.precision)
    memory_gib = torch.cuda.get_device_properties(env.device).total_memory / 2**30 if cuda else 80.0
    plan = plan_memory(cfg, gpus_per_node=env.world_size, gpu_memory_gib=memory_gib).to_json()
    row = {
        "config": " ".join(overrides), "ranks": env.world_size, "steps": steps,
        "loss_first_last": [losses[0], losses[-1]],
        "step_s": sum(timed) / len(timed), "tokens_per_s": tokens_per_s,
        "mfu": trainer.flops_per_token * tokens_per_s / (peak * env.world_size) if peak else None,
        "peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
        "peak_reserved": torch.cuda.max_memory_reserved() if cuda else None,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "planned_gpu": plan["per_gpu_bytes"]["total"], "planned_cpu": plan["cpu_bytes"],
        "planned_max_micro_batch": plan["max_micro_batch"],
    }
    trainer.close()
    if env.is_main:
        print("GPU_CHECK " + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
