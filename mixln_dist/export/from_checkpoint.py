"""Export a training checkpoint: consolidate it with DeepSpeed's own machinery (any ZeRO stage, any number of
training ranks, no process group), then hand the fp32 weights to the in-memory conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from ..checkpoint import consolidated_state_dict, resolve
from ..config import to_dict
from ..data.meta import sha256_file
from ..errors import ExportError
from .convert import ExportResult, save_hf

PathLike = Union[str, Path]
PROVENANCE = ("zero_stage", "world_size", "precision", "tokenizer_sha256")


def export_checkpoint(path: PathLike, out_dir: PathLike, *, tokenizer: Optional[PathLike] = None,
                      dtype: torch.dtype = torch.float32, shard_size: str = "5GB", force: bool = False,
                      verify: bool = True, layout: str = "mixln", log=print) -> ExportResult:
    """A run directory, its checkpoints folder or one checkpoint -> a verified Hugging Face folder.

    The tokenizer defaults to the run's `data.tokenizer.path`; it must be the one the checkpoint was trained with.
    """
    ref = resolve(path)
    cfg = ref.config()
    state_info = ref.state()
    tokenizer = Path(tokenizer or cfg.data.tokenizer.path)
    _check_tokenizer(tokenizer, state_info.get("tokenizer_sha256"))
    log(f"consolidating {ref.path} (step {ref.step}, ZeRO stage {state_info.get('zero_stage')}, "
        f"{state_info.get('world_size')} rank(s))")
    state = consolidated_state_dict(ref)
    info = {
        "source": {"checkpoint": str(ref.path.resolve()), "step": ref.step,
                   "tokens_seen": state_info.get("parts", {}).get("progress", {}).get("tokens_seen"),
                   **{k: state_info[k] for k in PROVENANCE if k in state_info}},
        "mixln_config": to_dict(cfg),
    }
    return save_hf(state, cfg.model, cfg.norm, out_dir, tokenizer=tokenizer, dtype=dtype, shard_size=shard_size,
                   force=force, verify=verify, info=info, layout=layout)


def _check_tokenizer(path: Path, trained_sha256: Optional[str]) -> None:
    if not path.is_file():
        raise ExportError(f"the run's tokenizer {path} does not exist (relative paths are relative to the current "
                          "directory); run from where training ran, or pass --tokenizer PATH")
    sha = sha256_file(path)
    if trained_sha256 and sha != trained_sha256:
        raise ExportError(f"{path} (sha256 {sha[:12]}) is not the tokenizer the checkpoint was trained with "
                          f"({trained_sha256[:12]}); pass --tokenizer with the original .model")
