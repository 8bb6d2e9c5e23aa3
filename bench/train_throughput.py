#!/usr/bin/env python
"""Training step time of the default model under a few launch settings, and the cost of per-layer gradient-norm
logging: one table, from the trainer's own metrics.jsonl.

    python bench/train_throughput.py                 # about 5 minutes on 2 CPU cores
    python bench/train_throughput.py --steps 60      # quicker, noisier

Each case is a real `launch/pretrain.py` run on the bundled sample (prepared on first use) in a scratch
directory; the first logging window (warm-up) is dropped and the rest are averaged. Run-to-run noise on a CPU is
a few percent, more than gradient-norm logging costs: bench/grad_norm_overhead.py measures that directly.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = [
    ("1 rank, ZeRO-2, fp32", 1, ["zero.stage=2"]),
    ("1 rank, ZeRO-2, fp32, grad norms every 100 steps", 1, ["zero.stage=2", "train.diag_interval=100"]),
    ("1 rank, ZeRO-2, fp32, grad norms every step", 1, ["zero.stage=2", "train.diag_interval=1"]),
    # 8 sequences per rank: every row trains the same global batch of 16 x 256 tokens per step.
    ("2 ranks, ZeRO-3, fp32", 2, ["zero.stage=3", "train.micro_batch_size=8"]),
    ("2 ranks, ZeRO-3, bf16", 2, ["zero.stage=3", "train.micro_batch_size=8", "train.precision=bf16"]),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(case_dir: Path, nproc: int, overrides: list, steps: int, window: int) -> dict:
    args = [f"train.steps={steps}", f"train.log_interval={window}", f"train.eval_interval={steps * 10}",
            f"train.save_interval={steps * 10}", "train.progress_bar=false", "data.dir=" + str(case_dir.parent / "data"),
            f"train.out_dir={case_dir}", "train.run_name=run", *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["DS_ACCELERATOR"] = "cpu"
    if nproc > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(free_port()), str(REPO / "launch/pretrain.py"), *args]
    else:
        cmd = [sys.executable, str(REPO / "launch/pretrain.py"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        noise = ("Warning", "return func")
        log = "\n".join(line for line in proc.stderr.splitlines() if not any(n in line for n in noise))
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log[-6000:]}")
    lines = [json.loads(x) for x in (case_dir / "run/metrics.jsonl").read_text().splitlines()]
    rates = [m["tokens_per_s"] for m in lines if m["kind"] == "train"][1:]  # drop the warm-up window
    tokens_per_step = 16 * 256  # every case's global batch x sequence length
    rate = statistics.mean(rates)
    return {"tokens_per_s": rate, "step_ms": 1000 * tokens_per_step / rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--window", type=int, default=20, help="steps per logging window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        results = []
        for i, (name, nproc, overrides) in enumerate(CASES):
            r = run(Path(scratch) / f"case{i}", nproc, overrides, args.steps, args.window)
            results.append((name, r))
            print(f"{name}: {r['step_ms']:.0f} ms/step", file=sys.stderr, flush=True)
    base = results[0][1]["step_ms"]
    print(f"\n| setting (debug model, 16 x 256 tokens per step) | ms/step | tokens/s | vs first row |")
    print("|---|---|---|---|")
    for name, r in results:
        print(f"| {name} | {r['step_ms']:.0f} | {r['tokens_per_s']:,.0f} | {100 * (r['step_ms'] / base - 1):+.1f}% |")


if __name__ == "__main__":
    main()
