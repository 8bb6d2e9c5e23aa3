"""`mixln-evaluate` (`launch/evaluate.py`): perplexity and bits per byte of a checkpoint or an exported Hugging
Face folder.

    python launch/evaluate.py runs/debug-mix0.25 --shards                # the run's own validation split
    python launch/evaluate.py hf/debug-mix --shards data/prepared/sample --seq-len 256
    python launch/evaluate.py runs/debug-mix0.25 --text notes.txt.gz other.jsonl --stride 128

--shards scores a prepared split exactly as the trainer's evaluation does (same samples, same loss), so on the
run's data and seq_len it reproduces the logged validation loss. --text scores documents with sliding windows,
read by the data pipeline's own reader (a .txt file, gzipped or not, is one document; each row of a .jsonl or
.parquet file is one), each after an EOS (the separator the model was trained with), every token scored once
with at least seq_len - stride tokens of context. Bits per byte divide the summed loss by the UTF-8 bytes of the
scored tokens, so models with different tokenizers compare. Definitions: docs/export.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import List

import torch

from ..errors import DataError, UsageError
from ..evaluation import EvalResult, counting_bytes, loss_sums, piece_byte_lengths, sliding_window_sums
from ..files import write_atomic
from ..pretrained import Pretrained, load_pretrained
from .common import run


def check_tokenizer(pre: Pretrained, model_path: str) -> None:
    """The tokenizer file must exist and, where the training run recorded its checksum, be that one; from then on
    the file's checksum is what data must match."""
    from ..data.meta import sha256_file

    if pre.tokenizer is None or not pre.tokenizer.is_file():
        raise DataError(f"no tokenizer for {model_path} ({pre.tokenizer or 'none in the folder'}); "
                         "pass --tokenizer PATH to the SentencePiece .model it was trained with")
    sha = sha256_file(pre.tokenizer)
    pre.check_tokenizer(sha, str(pre.tokenizer))
    pre.tokenizer_sha256 = sha


def evaluate_shards(pre: Pretrained, data_dir: str, seq_len: int, batch_size: int, samples: int, split: str,
                    byte_lengths: torch.Tensor, device: torch.device) -> EvalResult:
    """The trainer's evaluation (same batches, same loss_sums) plus the bytes of the scored targets."""
    from ..data import DatasetMeta, eval_batches

    pre.check_tokenizer(DatasetMeta.load(data_dir).tokenizer_sha256, str(data_dir))
    n_bytes = [0]
    batches = counting_bytes(eval_batches(data_dir, seq_len, batch_size, 0, 1, samples, split), byte_lengths, n_bytes)
    loss_sum, tokens = loss_sums(pre.model, batches, device).tolist()
    return EvalResult.from_sums(loss_sum, int(tokens), n_bytes[0])


def evaluate_text(pre: Pretrained, files: List[str], seq_len: int, stride: int, batch_size: int,
                  byte_lengths: torch.Tensor, device: torch.device) -> EvalResult:
    from ..data import Tokenizer, read_documents

    tokenizer = Tokenizer.load(pre.tokenizer)
    if tokenizer.eos_id < 0:
        raise DataError(f"tokenizer {pre.tokenizer} has no EOS piece to start documents with")
    loss_sum, tokens, n_bytes = 0.0, 0, 0
    for text in read_documents(files, "--text"):
        ids = tokenizer.encode(text)
        if not ids:
            continue
        s, n = sliding_window_sums(pre.model, [tokenizer.eos_id] + ids, seq_len, stride, batch_size, device)
        loss_sum, tokens, n_bytes = loss_sum + s, tokens + n, n_bytes + int(byte_lengths[ids].sum())
    return EvalResult.from_sums(loss_sum, tokens, n_bytes)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run directory, checkpoint folder, or Hugging Face folder")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--shards", nargs="?", const="", metavar="DIR",
                      help="a prepared dataset directory (without DIR: the run's own data.dir)")
    data.add_argument("--text", nargs="+", metavar="FILE",
                      help="text to score: .txt(.gz) files (each one document), .jsonl/.parquet (each row one)")
    p.add_argument("--split", default="validation", choices=("validation", "train"), help="--shards split")
    p.add_argument("--seq-len", type=int, help="tokens per sample / window (default: the training data.seq_len)")
    p.add_argument("--stride", type=int, help="--text: new tokens scored per window (default: seq_len / 2)")
    p.add_argument("--batch-size", type=int, help="samples per forward pass (default: the training micro batch)")
    p.add_argument("--samples", type=int, help="--shards: only the first N samples (default: as many as the "
                                                "trainer evaluated, train.eval_samples; 0: all)")
    p.add_argument("--tokenizer", help="SentencePiece .model (default: the run's, or the folder's tokenizer.model)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run(lambda: evaluate(args))


def evaluate(args: argparse.Namespace) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no GPU here; use --device cpu")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    start = time.perf_counter()
    pre = load_pretrained(args.model, device)
    if args.tokenizer:
        pre.tokenizer = Path(args.tokenizer)
    check_tokenizer(pre, args.model)
    seq_len = args.seq_len or pre.seq_len
    if not 1 <= seq_len <= pre.model.cfg.max_seq_len:
        raise UsageError(f"--seq-len {seq_len} must be in [1, model.max_seq_len={pre.model.cfg.max_seq_len}]")
    batch_size = args.batch_size or pre.micro_batch_size
    byte_lengths = piece_byte_lengths(str(pre.tokenizer))
    if args.text:
        stride = args.stride or max(1, seq_len // 2)
        if not 1 <= stride <= seq_len:
            raise UsageError(f"--stride {stride} must be between 1 and the window length {seq_len}")
        result = evaluate_text(pre, args.text, seq_len, stride, batch_size, byte_lengths, device)
        data = f"{len(args.text)} text file(s), window {seq_len}, stride {stride}"
    else:
        data_dir = args.shards or pre.data_dir
        if not data_dir:
            raise DataError(f"{args.model} does not record its training data; pass --shards DIR")
        samples = pre.eval_samples if args.samples is None else args.samples
        result = evaluate_shards(pre, data_dir, seq_len, batch_size, samples, args.split, byte_lengths, device)
        data = (f"{data_dir} {args.split} split, seq_len {seq_len}, "
                + (f"first {samples} samples" if samples else "all samples"))
    seconds = time.perf_counter() - start
    print(f"model: {pre.label}\ndata:  {data}: {result.tokens:,} tokens, {result.bytes:,} bytes\n"
          f"loss {result.loss:.6f} nats/token | perplexity {result.perplexity:.4f} | "
          f"bits/byte {result.bits_per_byte:.6f} | {seconds:.1f} s")
    if args.json:
        write_atomic(args.json, json.dumps({"model": args.model, "data": data, "seq_len": seq_len,
                                            **result.as_dict(), "seconds": seconds}, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
