"""`mixln-analyze` (`launch/analyze.py`): the depth diagnostics of a checkpoint (angular distance between layers,
validation-loss drop when a layer is removed, per-layer gradient norms), and a markdown report comparing
analysed runs (docs/diagnostics.md)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..diagnostics.angular import angular_distances
from ..diagnostics.drop import layer_removal_drop
from ..diagnostics.grad_norms import grad_norm_profile
from ..diagnostics.report import comparison_report, outputs, refuse_to_overwrite, save_result
from ..diagnostics.sources import ShardSource, TextSource, as_batches
from ..errors import AnalysisError
from ..files import write_atomic
from ..pretrained import load_pretrained
from .common import run

EXAMPLES = """\
examples:
  python launch/analyze.py all runs/debug-mix0.25               # the run's own validation split
  python launch/analyze.py angular runs/debug-mix0.25 --text a.txt.gz --all-tokens
  python launch/analyze.py drop runs/debug-mix0.25/checkpoints/step_0000300 --samples 0 --out /tmp/drop
  python launch/analyze.py report runs/debug-pre runs/debug-mix0.25 --out report.md
"""
KIND_OF = {"angular": ["angular"], "drop": ["drop"], "grads": ["grad_norms"], "all": ["angular", "drop", "grad_norms"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch/analyze.py", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Depth diagnostics of a checkpoint: angular distance between "
                                                 "layers, loss drop when a layer is removed, gradient norms.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {"angular": "angular distance d(l, l+n) between residual-stream states: CSV + heatmap",
             "drop": "validation loss with each layer removed in turn: CSV + bar chart",
             "grads": "per-layer gradient norms from a few backward passes: CSV + plot",
             "all": "all three"}
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("checkpoint", help="a run directory (its newest checkpoint), a checkpoints/step_NNNNNNN "
                                          "folder, or an exported Hugging Face folder")
        source = p.add_mutually_exclusive_group()
        source.add_argument("--shards", type=Path, metavar="DIR",
                            help="prepared data directory (default: the run's data.dir)")
        source.add_argument("--text", nargs="+", type=Path, metavar="FILE",
                            help="text (.txt(.gz) files, each one document; .jsonl/.parquet rows), tokenized with "
                                 "the run's tokenizer")
        p.add_argument("--split", default="validation", help="split of --shards to read (default: validation)")
        p.add_argument("--out", type=Path, metavar="DIR",
                       help="output folder (default: <run_dir>/analysis/step_NNNNNNN)")
        p.add_argument("--overwrite", action="store_true", help="replace results already in the output folder")
        p.add_argument("--seq-len", type=_at_least(1),
                       help="tokens per window or sample (default: the run's data.seq_len)")
        p.add_argument("--batch-size", type=_at_least(1), default=8, help="sequences per forward pass (default: 8)")
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
        if name in ("angular", "all"):
            p.add_argument("--stride", type=_at_least(1), help="tokens between window starts (default: seq-len / 4)")
            p.add_argument("--windows", type=_at_least(0), default=256,
                           help="windows, spread evenly over the source (default: 256; 0 = all)")
            p.add_argument("--all-tokens", action="store_true",
                           help="average over every token of each window (default: its last token, as in the paper)")
        if name in ("drop", "all"):
            p.add_argument("--samples", type=_at_least(0), default=256,
                           help="validation samples per evaluation (default: 256; 0 = the whole split)")
        if name in ("grads", "all"):
            p.add_argument("--grad-batches", type=_at_least(1), default=4,
                           help="backward passes, on the first batches of the source (default: 4)")
    p = sub.add_parser("report", help="one markdown file comparing analysed runs, figures side by side",
                       description="one markdown file comparing analysed runs, figures side by side")
    p.add_argument("paths", nargs="+", help="run directories (their newest analysis) or analysis folders")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="the markdown file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # analysis never downloads anything
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    return run(lambda: report(args) if args.command == "report" else analyze(args))


def report(args: argparse.Namespace) -> None:
    refuse_to_overwrite([args.out], args.overwrite, how="another --out")
    text = comparison_report(args.paths, args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, text)
    print(f"wrote {args.out}")


def analyze(args: argparse.Namespace) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise AnalysisError("--device cuda, but torch sees no GPU here; use --device cpu (fine for small models)")
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    subject = load_pretrained(args.checkpoint, device)
    if args.dtype == "bf16":
        subject.model.to(torch.bfloat16)
    out = args.out or subject.analysis_dir
    if out is None:
        raise AnalysisError(f"{args.checkpoint} is not a training run, so there is no default output folder; "
                            "pass --out DIR")
    kinds = KIND_OF[args.command]
    if "drop" in kinds and len(subject.model.layers) < 2:
        raise AnalysisError("the layer-removal drop needs at least 2 layers; this model has 1 (run angular or grads)")
    refuse_to_overwrite([p for kind in kinds for p in outputs(out, kind)], args.overwrite)
    seq_len = args.seq_len or subject.seq_len
    if not 1 <= seq_len <= subject.model.cfg.max_seq_len:
        raise AnalysisError(f"--seq-len {seq_len} must be in [1, model.max_seq_len={subject.model.cfg.max_seq_len}]")
    if args.text:
        tokens = TextSource(args.text, subject, seq_len)
    elif args.shards or subject.data_dir:
        tokens = ShardSource(args.shards or subject.data_dir, subject, seq_len, args.split)
    else:
        raise AnalysisError(f"{args.checkpoint} names no training data; pass --shards DIR or --text FILE...")
    settings = {"seq_len": seq_len, "batch_size": args.batch_size, "device": str(device), "dtype": args.dtype,
                "tokens": tokens.name}
    print(f"analysing {subject.label} ({subject.meta['scheme']}: {len(subject.model.layers)} layers) -> {out}")

    def run(kind: str, compute: Callable, extra: dict) -> None:
        start = time.perf_counter()
        result = compute()
        seconds = time.perf_counter() - start
        save_result(out, kind, result, subject.meta, {**settings, **extra}, seconds, subject.label)
        print(f"  {kind}: {_headline(kind, result.summary())} ({seconds:.1f} s)")

    if "angular" in kinds:
        stride = args.stride or max(1, seq_len // 4)
        windows = tokens.windows(stride, args.windows)
        run("angular", lambda: angular_distances(subject.model, windows, args.batch_size, all_tokens=args.all_tokens,
                                                 progress=True),
            {"stride": stride, "windows": len(windows), "all_tokens": args.all_tokens})
    if "drop" in kinds:
        batches = as_batches(tokens.rows(args.samples), args.batch_size)
        run("drop", lambda: layer_removal_drop(subject.model, batches, progress=True),
            {"samples": sum(len(b) for b, _ in batches)})
    if "grad_norms" in kinds:
        batches = [b for b, _ in as_batches(tokens.rows(args.grad_batches * args.batch_size), args.batch_size)]
        run("grad_norms", lambda: grad_norm_profile(subject.model, batches), {"batches": len(batches)})


def _headline(kind: str, s: dict) -> str:
    if kind == "angular":
        return f"mean d(l, l+1) {s['mean_adjacent']:.3f}, deepest quarter {s['mean_adjacent_deepest_quarter']:.3f}"
    if kind == "drop":
        return (f"full loss {s['base_loss']:.3f}; largest increase {s['max_increase']:.3f} (layer "
                f"{s['max_increase_layer']}), deepest quarter {s['mean_increase_deepest_quarter']:.3f}")
    return f"last / first layer gradient norm {s['last_to_first_ratio']:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
