"""`mixln-export-hf` (`launch/export_hf.py`): export a checkpoint to a Hugging Face folder, proven equal to our
model before it is written.

    python launch/export_hf.py runs/debug-mix0.25 hf/debug-mix                # newest complete checkpoint
    python launch/export_hf.py runs/debug-mix0.25/checkpoints/step_0000300 hf/s300 --dtype bf16 --shard-size 2GB

Any ZeRO stage and any number of training ranks (DeepSpeed's consolidation, no process group). A Pre-LN model
becomes a stock LlamaForCausalLM; any other placement ships its modeling code (load it with
`trust_remote_code=True`). `--layout official` writes the official Mix-LN code's weight names instead (load it
with that code, NORM_TYPE and POST_NUM set as config.json's norm_type and post_num say). See docs/export.md.
"""

from __future__ import annotations

import argparse

from ..export import DTYPES, LAYOUTS, export_checkpoint
from .common import run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run directory, its checkpoints/ folder, or one checkpoints/step_N folder")
    p.add_argument("out_dir", help="the Hugging Face folder to write (must not exist or be empty, unless --force)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="weight storage precision (default fp32: the trained master weights, exactly)")
    p.add_argument("--shard-size", default="5GB", help="largest safetensors file, e.g. 2GB or 500MB (default 5GB)")
    p.add_argument("--tokenizer", help="SentencePiece .model to ship (default: the run's data.tokenizer.path)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty out_dir")
    p.add_argument("--layout", choices=LAYOUTS, default="mixln",
                   help="weight names: mixln (Llama's, with our modeling code; default) or official (the official "
                        "Mix-LN code's, for its transformers-4.31 LlamaForCausalLM)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip loading the export with transformers to compare logits and generation "
                        "(saves time and a second copy of the model in memory)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> None:
        result = export_checkpoint(args.checkpoint, args.out_dir, tokenizer=args.tokenizer, dtype=DTYPES[args.dtype],
                                   shard_size=args.shard_size, force=args.force, verify=args.verify,
                                   layout=args.layout)
        print(result.summary())

    return run(body)


if __name__ == "__main__":
    raise SystemExit(main())
