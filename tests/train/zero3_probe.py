"""Measurements of ZeRO-3 at scale on the CPU, for tests/train/test_zero3_scale.py; each writes OUT.rank<r>.json.

    torchrun --nproc_per_node 2 tests/train/zero3_probe.py build OUT OVERRIDES...   # zero.Init construction
    python tests/train/zero3_probe.py full OUT OVERRIDES...                        # the unsharded build
    torchrun --nproc_per_node 2 tests/train/zero3_probe.py step OUT OVERRIDES...    # two training steps

Memory is read from the kernel: the resident set now (/proc/self/statm) and the peak (getrusage), in bytes.
"""

import json
import os
import resource
import sys
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def tensor_stats(named):
    """Per-tensor std and sum in float64, of full tensors."""
    return {n: [p.detach().double().std().item() if p.numel() > 1 else 0.0, p.detach().double().sum().item()]
            for n, p in named}


def build(cfg, env):
    import deepspeed

    from mixln_dist.train.ds_config import deepspeed_config, plan_batches
    from mixln_dist.train.engine import initialised_model

    ds = deepspeed_config(cfg, plan_batches(cfg.train.micro_batch_size, None, None, env.world_size), "fp32")
    before = rss_now()
    start = time.perf_counter()
    model = initialised_model(cfg, env, ds)
    seconds = time.perf_counter() - start
    params = list(model.named_parameters())
    resident = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for _, p in params)
    full = sum(p.ds_numel * 4 for _, p in params)
    result = {"rss_before": before, "rss_after": rss_now(), "peak_rss": rss_peak(), "seconds": seconds,
              "resident_param_bytes": resident, "full_param_bytes": full,
              "visible_param_elements": sum(p.numel() for _, p in params)}  # ZeRO-3 leaves empty tensors
    stats = {}
    for name, p in params:  # one tensor gathered at a time: all ranks take part, rank 0 records
        with deepspeed.zero.GatheredParameters([p]):
            if env.is_main:
                stats.update(tensor_stats([(name, p)]))
    result["stats"] = stats
    return result


def full(cfg, env):
    import torch

    from mixln_dist.model import build_model

    before = rss_now()
    torch.manual_seed(cfg.train.seed)  # as the engine does
    start = time.perf_counter()
    model = build_model(cfg.model, cfg.norm, "cpu")
    seconds = time.perf_counter() - start
    return {"rss_before": before, "peak_rss": rss_peak(), "seconds": seconds,
            "stats": tensor_stats(model.named_parameters())}


def step(cfg, env):
    """Under glibc's default heap, whose resident set follows what is allocated: the planner predicts allocations
    (on a GPU, the caching allocator's), not the blocks CPU training keeps in its heap once freed."""
    from mixln_dist.train.distributed import freed_cpu_memory_returned
    from mixln_dist.train.memory_plan import plan_memory
    from mixln_dist.train.trainer import Trainer

    with freed_cpu_memory_returned():
        before = rss_now()
        trainer = Trainer(cfg, env, log=lambda *a, **k: None)
        built = rss_now()
        losses, times = [], []
        for _ in range(2):
            start = time.perf_counter()
            losses.append(trainer.train_step().loss.item())
            times.append(time.perf_counter() - start)
        result = {"rss_before": before, "rss_built": built, "peak_rss": rss_peak(), "losses": losses,
                  "step_seconds": times, "plan": plan_memory(cfg, gpus_per_node=env.world_size).to_json()}
        trainer.close()
    return result


def main():
    from mixln_dist.config import compose
    from mixln_dist.train.distributed import init_distributed

    mode, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    cfg = compose(overrides)
    env = init_distributed("cpu", timeout_s=1200)
    result = {"build": build, "full": full, "step": step}[mode](cfg, env)
    with open(f"{out}.rank{env.rank}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
