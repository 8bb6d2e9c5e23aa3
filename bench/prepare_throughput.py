#!/usr/bin/env python
"""Data pipeline benchmark: preparation throughput on the books corpus, and the loader's memory.

    python bench/prepare_throughput.py                       # 2 cores, data=books (8k BPE), a temporary directory
    python bench/prepare_throughput.py --num-proc 4 --out /tmp/books_bench

Each phase runs in a fresh process, so that imports and peak memory are its own:
  tokenizer  train data=books' 8k BPE (seconds)
  prepare    prepare_dataset: read the gzipped text through datasets, encode, write and hash the shards
             (tokens/s and CPU-seconds; the target is >= 1 M tokens/s on 2 cores), and the same for the whole
             process, interpreter start and imports included
  load       one epoch of TrainLoader batches (seq_len 256, 64 per batch) plus a validation pass over the books
  load-1b    the same loader over a synthetic 1 B-token dataset (a 2 GB sparse shard), 500 batches: RAM must not
             grow with the corpus
For the loads it reports peak RSS and how much of it is anonymous memory (the permutation, batches) versus mapped
shard pages (page cache, which the kernel can drop).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def rss_mb() -> dict:
    """Current resident memory from /proc/self/status, in MB: total, anonymous and file-backed (mmap)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile")}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def data_config(out: str, num_proc: int):
    from mixln_dist.config import compose

    return compose(["data=books", f"data.dir={out}", f"data.num_proc={num_proc}"]).data


def phase_tokenizer(out: str, num_proc: int) -> dict:
    from mixln_dist.data import train_tokenizer

    start = time.time()
    tok = train_tokenizer(data_config(out, num_proc), force=True)
    return {"seconds": time.time() - start, "vocab_size": tok.vocab_size}


def phase_prepare(out: str, num_proc: int) -> dict:
    start = time.time()
    import datasets  # noqa: F401  (imports are timed apart: the parent also times the whole process)

    from mixln_dist.data import prepare_dataset

    cfg = data_config(out, num_proc)
    imported, cpu_before = time.time(), cpu_seconds()
    meta = prepare_dataset(cfg, force=False)
    seconds, cpu = time.time() - imported, cpu_seconds() - cpu_before
    tokens = sum(s.num_tokens for s in meta.splits.values())
    shards = {sh.file: os.path.getsize(Path(out) / sh.file) for s in meta.splits.values() for sh in s.shards}
    return {"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu, "import_seconds": imported - start,
            "shards": shards, "dtype": meta.dtype, "peak_rss_mb": peak_rss_mb()}


def cpu_seconds() -> float:
    """CPU time of this process, all threads (SentencePiece's included): comparable on a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def iterate_loader(data_dir: str, batches: int, seq_len: int = 256, batch: int = 64, eval_pass: bool = True) -> dict:
    import torch  # noqa: F401
    from mixln_dist.data import TrainLoader, eval_batches

    base = rss_mb()
    start = time.time()
    loader = TrainLoader(data_dir, seq_len, batch, dp_rank=0, dp_world=1, seed=1234)
    n = batches or loader.samples_per_epoch // batch
    for _ in range(n):
        loader.next_batch()
    if eval_pass:
        for _ in eval_batches(data_dir, seq_len, batch, dp_rank=0, dp_world=1):
            pass
    seconds = time.time() - start
    now = rss_mb()
    return {"batches": n, "samples": loader.num_samples, "batches_per_s": n / seconds,
            "baseline_rss_mb": base["VmRSS"], "peak_rss_mb": peak_rss_mb(),
            "anon_growth_mb": now["RssAnon"] - base["RssAnon"], "file_rss_mb": now["RssFile"] - base["RssFile"]}


def phase_load(out: str, num_proc: int) -> dict:
    return iterate_loader(out, batches=0)


def phase_load_1b(out: str, num_proc: int) -> dict:
    """A 1 B-token dataset made of one sparse shard (zeros): only its metadata is real."""
    from mixln_dist.data import DatasetMeta, ShardMeta, SplitMeta

    big = Path(out) / "synthetic_1b"
    big.mkdir(exist_ok=True)
    splits = {}
    for split, tokens in (("train", 1_000_000_000), ("validation", 1_000_000)):
        name = f"{split}-00000.bin"
        with open(big / name, "wb") as f:
            f.truncate(tokens * 2)
        splits[split] = SplitMeta(tokens, 1, 0, "synthetic zeros", [ShardMeta(name, tokens, "", "")])
    DatasetMeta("synthetic", "uint16", 8192, "", "", 2, splits, {}).save(big)
    return iterate_loader(str(big), batches=500, eval_pass=False)


PHASES = {"tokenizer": phase_tokenizer, "prepare": phase_prepare, "load": phase_load, "load-1b": phase_load_1b}


def run_phase(name: str, out: str, num_proc: int) -> dict:
    """One phase in a fresh interpreter; its JSON result plus the whole process's wall time."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--phase", name, "--out", out, "--num-proc", str(num_proc)]
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"phase {name} failed:\n{proc.stdout}{proc.stderr}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_seconds": time.time() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-proc", type=int, default=2, help="cores for SentencePiece (default 2)")
    p.add_argument("--out", help="directory to prepare into (default: a temporary one, removed afterwards)")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)  # internal: one phase, JSON out
    args = p.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.out, args.num_proc)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        tok = run_phase("tokenizer", out, args.num_proc)
        prep = run_phase("prepare", out, args.num_proc)
        load = run_phase("load", out, args.num_proc)
        big = run_phase("load-1b", out, args.num_proc)
    print(f"books corpus, {args.num_proc} cores, data=books ({tok['vocab_size']}-piece BPE, {prep['dtype']} shards)")
    print(f"  tokenizer training     {tok['seconds']:.1f} s")
    print(f"  preparation            {prep['tokens']:,} tokens in {prep['seconds']:.2f} s: "
          f"{prep['tokens'] / prep['seconds'] / 1e6:.2f} M tokens/s ({prep['cpu_seconds']:.2f} CPU-seconds, "
          f"{prep['tokens'] / prep['cpu_seconds'] / 1e6:.2f} M tokens per CPU-second); peak RSS "
          f"{prep['peak_rss_mb']:.0f} MB")
    print(f"  the whole process      {prep['process_seconds']:.2f} s with interpreter start and imports "
          f"({prep['import_seconds']:.2f} s for torch, hydra and datasets): "
          f"{prep['tokens'] / prep['process_seconds'] / 1e6:.2f} M tokens/s")
    for name, size in prep["shards"].items():
        print(f"    {name:<22} {size / 1e6:8.2f} MB")
    for label, r in (("load, books", load), ("load, 1 B tokens", big)):
        print(f"  {label:<22} {r['batches']} batches of 64 x 257 ({r['samples']:,} samples) at "
              f"{r['batches_per_s']:.0f} batches/s; peak RSS {r['peak_rss_mb']:.0f} MB (after imports "
              f"{r['baseline_rss_mb']:.0f} MB; growth: {r['anon_growth_mb']:.1f} MB anonymous, "
              f"{r['file_rss_mb']:.1f} MB mapped shard pages)")


if __name__ == "__main__":
    main()
