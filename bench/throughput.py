#!/usr/bin/env python
"""Training-step throughput of our model against transformers' LlamaForCausalLM, in one run, as ratio tables.

    python bench/throughput.py                      # debug and llama_71m at sequence 256: <3 min on 2 CPU cores
    python bench/throughput.py --models debug --reps 9
    python bench/throughput.py --threads 1          # on a loaded machine: one thread waits less for time slices

A step is forward, loss, backward, clipping to optim.grad_clip and an AdamW step: the trainer's update. Every
case of a table gets the same weights, batch, threads, dtype (fp32 on a CPU, bf16 weights on a GPU) and optimizer;
the cases run in turns (one step each per round, so load that comes and goes hits all alike), and each reports
the median over the rounds after warm-up. Tables:
1. ours (Pre-LN, which is exactly Llama) against transformers, with ours through the plain loss (full fp32
   logits, what transformers does) and, with --compile, ours with compiled blocks: what each change buys;
2. Pre-LN, Mix-LN and Post-LN on our model: norm placement should cost nothing;
3. the DeepSpeed engine (the trainer's build: generated config, our optimizer) at ZeRO-0 and ZeRO-2 (ZeRO-1 and
   ZeRO-2 in bf16, where ZeRO-0 is refused) against the bare PyTorch step on the same model.
Each step is also given as achieved FLOP/s (the trainer's MFU formula, mixln_dist/train/metrics.py) and as a
fraction of the ceiling this machine reaches in the same run: a large matrix product in the same dtype. Peak
memory is the tensors allocated during one step (mixln_dist/memory.py), not the weights and optimizer states
held before it, which all cases share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BATCH = {"debug": 16, "llama_71m": 2}  # sequences per step: the default job's 16; 71m kept to ~2 s a step
TARGETS = "ours >= 1.3x transformers' tokens/s, Mix-LN within 2% of Pre-LN, DeepSpeed <= 5% over bare, memory <= transformers'"


@dataclass
class Case:
    name: str
    step: Callable[[], None]
    memory: bool = True  # measure peak memory (not for compiled code, whose kernels the counter cannot see)
    times: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cases: List[Case], device, warmup: int, reps: int) -> None:
    """Warm-up steps, one step under the memory counter, then `reps` rounds of one timed step per case."""
    from mixln_dist.memory import PeakMemory

    for case in cases:
        for _ in range(warmup):
            case.step()
        if case.memory:
            with PeakMemory(device) as mem:
                case.step()
            case.peak_bytes = mem.peak_bytes
        print(f"  warmed up {case.name}", file=sys.stderr, flush=True)
    for _ in range(reps):
        for case in cases:
            sync(device)
            start = time.perf_counter()
            case.step()
            sync(device)
            case.times.append(time.perf_counter() - start)


def matmul_ceiling(device, dtype, reps: int) -> float:
    """FLOP/s of a square matrix product large enough to be compute-bound, median of `reps`."""
    import torch

    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for _ in range(reps + 1):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times[1:])


# Steps -----------------------------------------------------------------------------------------------------------


def plain_step(model, optimizer, inputs, targets, loss_fn, grad_clip: float):
    """The trainer's update without DeepSpeed: loss, backward, clipping to optim.grad_clip (as the engine clips by
    its config), AdamW."""
    import torch

    def step():
        loss_fn(model, inputs, targets).backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def ours_loss(model, inputs, targets):
    return model(inputs, targets=targets)


def ours_plain_loss(model, inputs, targets):
    import torch.nn.functional as F

    return F.cross_entropy(model(inputs).float().flatten(0, 1), targets.flatten())


def hf_loss(model, inputs, targets):
    # transformers' own loss (ForCausalLMLoss: fp32 logits, cross_entropy); shift_labels: targets already shifted
    return model(input_ids=inputs, labels=targets, shift_labels=targets).loss


def engine_step(engine, inputs, targets):
    def step():
        engine.backward(engine(inputs, targets=targets))
        engine.step()

    return step


# Building ---------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, device, dtype):
        import torch

        self.args, self.device, self.dtype = args, device, dtype
        self.precision = "bf16" if dtype == torch.bfloat16 else "fp32"

    def config(self, model: str, scheme: str):
        from mixln_dist.config import compose

        return compose([f"model={model}", f"norm={scheme}", f"data.seq_len={self.args.seq}",
                        f"train.micro_batch_size={BATCH[model]}", f"train.precision={self.precision}"])

    def ours(self, cfg, state=None):
        from mixln_dist.model import build_model

        return build_model(cfg.model, cfg.norm, self.device, state=state).to(self.dtype)

    def optimizer(self, model, cfg):
        from mixln_dist.train.optim import build_optimizer

        return build_optimizer(model, cfg.optim, "torch")

    def plain(self, model, cfg, inputs, targets, loss_fn):
        return plain_step(model, self.optimizer(model, cfg), inputs, targets, loss_fn, cfg.optim.grad_clip)

    def hf(self, cfg, state):
        import transformers

        from mixln_dist.export.hf_config import hf_fields
        from mixln_dist.export.keys import to_hf_llama

        hf_cfg = transformers.LlamaConfig(**hf_fields(cfg.model, cfg.norm), attn_implementation="sdpa")
        model = transformers.LlamaForCausalLM(hf_cfg).to(self.device)
        model.load_state_dict(to_hf_llama(state), strict=True)
        return model.to(self.dtype).train()

    def batch(self, cfg):
        import torch

        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, cfg.model.vocab_size, (BATCH[cfg.model.name], self.args.seq + 1), generator=g)
        tokens = tokens.to(self.device)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def seeded(self, name: str, scheme: str):
        """The config, our model from seed 0, a copy of its weights for the other cases, and the batch."""
        import torch

        cfg = self.config(name, scheme)
        torch.manual_seed(0)
        model = self.ours(cfg)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return (cfg, model, state, *self.batch(cfg))

    def flops_per_step(self, cfg, model) -> float:
        from mixln_dist.train.metrics import flops_per_token

        tokens = BATCH[cfg.model.name] * self.args.seq
        return tokens * flops_per_token(model, cfg.model.n_layers, cfg.model.dim, self.args.seq)

    # The three tables ----------------------------------------------------------------------------------------

    def vs_transformers(self, name: str) -> List[Case]:
        from mixln_dist.train.compile import apply_compile

        cfg, base, state, inputs, targets = self.seeded(name, "pre")
        hf = self.hf(cfg, state)
        cases = [Case("transformers LlamaForCausalLM", self.plain(hf, cfg, inputs, targets, hf_loss))]
        plain = self.ours(cfg, state)
        cases.append(Case("ours, plain loss (full fp32 logits)",
                          self.plain(plain, cfg, inputs, targets, ours_plain_loss)))
        cases.append(Case("ours", self.plain(base, cfg, inputs, targets, ours_loss)))
        if self.args.compile:
            compiled = self.ours(cfg, state)
            apply_compile(compiled)
            cases.append(Case("ours, compiled blocks (train.compile)",
                              self.plain(compiled, cfg, inputs, targets, ours_loss),
                              memory=False))
        return cases

    def schemes(self, name: str) -> List[Case]:
        cases = []
        for scheme in ("pre", "mix", "post"):
            cfg, model, _, inputs, targets = self.seeded(name, scheme)
            cases.append(Case(f"ours, {scheme}", self.plain(model, cfg, inputs, targets, ours_loss)))
        return cases

    def engines(self, name: str) -> List[Case]:
        import deepspeed

        from mixln_dist.train.ds_config import deepspeed_config, plan_batches
        from mixln_dist.train.engine import fit_reduce_bucket, make_skippable, skip_lone_allreduce

        cfg, bare, state, inputs, targets = self.seeded(name, "mix")
        cases = [Case("bare PyTorch", self.plain(bare, cfg, inputs, targets, ours_loss))]
        stages = (0, 2) if self.precision == "fp32" else (1, 2)
        for stage in stages:
            cfg.zero.stage = stage
            ds = deepspeed_config(cfg, plan_batches(BATCH[name], 1, None, 1), self.precision, load_universal=False)
            model = self.ours(cfg, state)
            fit_reduce_bucket(ds, model)  # as the trainer does (train/engine.py)
            optimizer = self.optimizer(model, cfg)
            if stage == 0:
                make_skippable(optimizer)
            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds, dist_init_required=False)
            skip_lone_allreduce(engine)
            cases.append(Case(f"DeepSpeed ZeRO-{stage}", engine_step(engine, inputs, targets)))
        return cases


# Report -------------------------------------------------------------------------------------------------------


def table(title: str, cases: List[Case], flops: float, tokens: int, ceiling: float, ref: Case) -> str:
    lines = [f"\n{title}\n",
             "| case | ms/step | tokens/s | vs first row | TFLOP/s | of ceiling | peak step memory | vs first row |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        t = statistics.median(c.times)
        t_ref = statistics.median(ref.times)
        mem = f"{c.peak_bytes / 2**20:,.0f} MiB" if c.peak_bytes is not None else "-"
        mem_ratio = f"{c.peak_bytes / ref.peak_bytes:.2f}x" if c.peak_bytes and ref.peak_bytes else "-"
        lines.append(f"| {c.name} | {1000 * t:,.0f} | {tokens / t:,.0f} | {t_ref / t:.2f}x | {flops / t / 1e12:.3f} | "
                     f"{100 * flops / t / ceiling:.0f}% | {mem} | {mem_ratio} |")
    return "\n".join(lines)


def speed(cases: List[Case], name: str) -> float:
    return 1 / statistics.median(next(c for c in cases if c.name == name).times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["debug", "llama_71m"], choices=sorted(BATCH))
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--reps", type=int, default=7, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per case (the first ones fault in fresh memory)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default, all cores)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time ours with compiled blocks (tens of seconds of compilation per model)")
    parser.add_argument("--tables", nargs="+", default=["transformers", "schemes", "deepspeed"],
                        choices=["transformers", "schemes", "deepspeed"])
    args = parser.parse_args()
    started = time.perf_counter()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch starts its thread pool
    import torch

    from mixln_dist.train.distributed import init_distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    # The trainer's process setup (rendezvous for DeepSpeed; on a CPU it keeps freed memory), for every case alike.
    env = init_distributed(args.device)
    device = env.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    import transformers
    import deepspeed

    bench = Bench(args, device, dtype)
    ceiling = matmul_ceiling(device, dtype, max(args.reps, 5))
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, deepspeed {deepspeed.__version__}; "
          f"{hw}, {torch.get_num_threads()} threads, {dtype}; load average {os.getloadavg()[0]:.1f} at start")
    print(f"matmul ceiling ({dtype}): {ceiling / 1e12:.3f} TFLOP/s")
    summary = []
    for name in args.models:
        for which in args.tables:
            cases = {"transformers": bench.vs_transformers, "schemes": bench.schemes,
                     "deepspeed": bench.engines}[which](name)
            print(f"{name}, {which}: building done", file=sys.stderr, flush=True)
            measure(cases, device, args.warmup, args.reps)
            cfg = bench.config(name, "pre")
            flops = bench.flops_per_step(cfg, bench.ours(cfg))  # the same architecture in every case
            tokens = BATCH[name] * args.seq
            print(table(f"{name}, {BATCH[name]} x {args.seq} tokens per step, {which}", cases, flops, tokens,
                        ceiling, cases[0]), flush=True)
            if which == "transformers":
                hf, ours = cases[0], next(c for c in cases if c.name == "ours")
                summary.append(f"{name}: ours {speed(cases, 'ours') / speed(cases, hf.name):.2f}x transformers' "
                               f"tokens/s, peak memory {ours.peak_bytes / hf.peak_bytes:.2f}x theirs")
                if args.compile:
                    summary.append(f"{name}: compiled {speed(cases, cases[-1].name) / speed(cases, hf.name):.2f}x "
                                   "transformers' tokens/s")
            elif which == "schemes":
                summary.append(f"{name}: mix {100 * (speed(cases, 'ours, pre') / speed(cases, 'ours, mix') - 1):+.1f}% "
                               "step time against pre")
            else:
                summary += [f"{name}: {c.name} {100 * (statistics.median(c.times) / statistics.median(cases[0].times) - 1):+.1f}% "
                            "step time over bare PyTorch" for c in cases[1:]]
            del cases
    print(f"\nsummary (targets: {TARGETS}):")
    print("\n".join(f"- {line}" for line in summary))
    print(f"\n{time.perf_counter() - started:.0f} s in all; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
