"""Run the official Mix-LN modeling code (github.com/pixeli99/MixLN, peft_pretraining/modeling_llama.py) on tiny
models: make this folder's fixture, or compute the logits of a folder written in its layout.

    MIXLN_OFFICIAL_CODE=/path/to/MixLN python official_logits.py make tests/export/official_fixture
    MIXLN_OFFICIAL_CODE=/path/to/MixLN python official_logits.py logits FOLDER TOKENS.safetensors OUT.safetensors

It needs what the official code needs, torch and transformers==4.31 (not this project's environment, whose
transformers is 5.x), e.g. `python -m venv .venv-official && .venv-official/bin/pip install torch==2.13.0
transformers==4.31.0`. The official code is loaded from MIXLN_OFFICIAL_CODE, a checkout of that repository; none
of it is copied here. It picks the norm placement from the environment variables NORM_TYPE and POST_NUM.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# One fixture per layout of layer norms the official code writes: post_pre has Post-LN and Pre-LN layers.
CASES = {"post_pre": {"NORM_TYPE": "post_pre", "POST_NUM": "2"}, "sandwich": {"NORM_TYPE": "sandwich"}}
SHAPE = dict(vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=4, num_attention_heads=2,
             max_position_embeddings=32, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1, pad_token_id=-1)


def official_model_class():
    code = os.environ.get("MIXLN_OFFICIAL_CODE")
    if not code or not (Path(code) / "peft_pretraining" / "modeling_llama.py").is_file():
        sys.exit("set MIXLN_OFFICIAL_CODE to a checkout of github.com/pixeli99/MixLN")
    sys.path.insert(0, code)
    from peft_pretraining.modeling_llama import LlamaForCausalLM

    return LlamaForCausalLM


def make(out: Path) -> None:
    from transformers import LlamaConfig

    model_class = official_model_class()
    for name, env in CASES.items():
        os.environ.update({"POST_NUM": "1", **env})
        torch.manual_seed(0)
        model = model_class(LlamaConfig(**SHAPE)).eval()
        with torch.no_grad():  # larger than the official init and non-trivial norms, so a misplaced tensor shows
            for key, p in model.named_parameters():
                p.uniform_(0.5, 1.5) if "norm" in key else p.normal_(0.0, 0.3)
        tokens = torch.randint(0, SHAPE["vocab_size"], (2, 12))
        with torch.no_grad():
            logits = model(tokens).logits
        model.save_pretrained(out / name, safe_serialization=True)
        (out / name / "generation_config.json").unlink(missing_ok=True)  # not needed: keep the fixture small
        save_file({"tokens": tokens, "logits": logits.contiguous()}, out / name / "logits.safetensors")
        (out / name / "norm_env.json").write_text(json.dumps(env, indent=2) + "\n")
        print(f"{out / name}: NORM_TYPE={env['NORM_TYPE']}, logits {tuple(logits.shape)}")


def logits(folder: Path, tokens_file: Path, out: Path) -> None:
    """The official code's logits for `folder` (NORM_TYPE/POST_NUM from its config.json's norm_type/post_num),
    failing if any weight is missing or unexpected: a folder in its layout must load without a warning."""
    config = json.loads((folder / "config.json").read_text())
    os.environ.update({"NORM_TYPE": config["norm_type"], "POST_NUM": str(config.get("post_num", 1))})
    model, info = official_model_class().from_pretrained(str(folder), output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        sys.exit(f"the official code does not load {folder} cleanly: {problems}")
    with torch.no_grad():
        result = model.eval()(load_file(tokens_file)["tokens"]).logits
    save_file({"logits": result.contiguous()}, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make").add_argument("out", type=Path)
    p = sub.add_parser("logits")
    for arg in ("folder", "tokens", "out"):
        p.add_argument(arg, type=Path)
    args = parser.parse_args()
    make(args.out) if args.command == "make" else logits(args.folder, args.tokens, args.out)
