"""Opening a trained model wherever it is stored, for everything that reads one after training: evaluation
(`launch/evaluate.py`), the depth analyses (`mixln_dist.diagnostics`) and warm starts (`train.init_from`).

A path is one of our run directories or checkpoint folders (any ZeRO stage, consolidated in one process) or a
Hugging Face folder (one of our exports, or a stock Llama), read through our import so that every kind is run by
the same model code. With the model come the defaults its training implies: tokenizer, data, sequence length,
batch size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from .checkpoint import load_model
from .errors import CheckpointError, ExportError
from .model import Transformer


@dataclass
class Pretrained:
    model: Transformer  # fp32, eval mode
    label: str  # for people: "debug-mix, step 600"
    meta: dict  # path, run_name, step, model, scheme, layer_kinds: written next to results
    tokenizer: Optional[Path]  # the SentencePiece model its token ids mean
    tokenizer_sha256: Optional[str]  # of the tokenizer it was trained with, where recorded
    data_dir: Optional[Path]  # the training run's prepared shards
    seq_len: int  # the training sequence length
    micro_batch_size: int = 8
    eval_samples: int = 0  # validation samples the trainer evaluated (0: all)
    analysis_dir: Optional[Path] = None  # where analyses of it go by default; None when it has no run directory

    def check_tokenizer(self, sha256: str, what: str) -> None:
        """`what` (a tokenizer or data) must use the tokenizer the model was trained with, where that is known."""
        if self.tokenizer_sha256 and sha256 != self.tokenizer_sha256:
            raise CheckpointError(
                f"{what} uses tokenizer sha256 {sha256[:12]}, but {self.label} was trained with "
                f"{self.tokenizer_sha256[:12]}: its token ids would mean other pieces; use the model's tokenizer and "
                "data prepared with it"
            )


def load_pretrained(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Pretrained:
    """A run directory, a `checkpoints/step_NNNNNNN` folder, or a Hugging Face folder. Raises CheckpointError or
    ExportError. Paths a run's config recorded are absolute (mixln_dist.paths); older relative ones are taken
    relative to the current directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a run directory, a checkpoint folder or a Hugging Face "
                              "folder")
    if (path / "config.json").is_file():
        return _from_hf_folder(path, device)
    model, cfg, ref = load_model(path, device)
    run_name = ref.root.parent.name
    meta = {"path": str(ref.path), "run_name": run_name, "step": ref.step, "model": cfg.model.name,
            "scheme": cfg.norm.scheme, "layer_kinds": model.layer_kinds}
    return Pretrained(model, f"{run_name}, step {ref.step}", meta, Path(cfg.data.tokenizer.path),
                      ref.state().get("tokenizer_sha256"), Path(cfg.data.dir), cfg.data.seq_len,
                      cfg.train.micro_batch_size, cfg.train.eval_samples, ref.root.parent / "analysis" / ref.tag)


def _from_hf_folder(path: Path, device) -> Pretrained:
    """Reading the folder is the export package's job (imported lazily: our own checkpoints never need it). An
    export of ours records the run it came from, which supplies the defaults; a foreign Llama gets generic ones."""
    from .export.convert import INFO_FILE, import_hf_model

    model = import_hf_model(path, device=device)
    try:
        info = json.loads((path / INFO_FILE).read_text()) if (path / INFO_FILE).is_file() else {}
    except (OSError, ValueError) as e:
        raise ExportError(f"{path / INFO_FILE} cannot be read ({e}); it only records where the export came from: "
                          "delete it to load the folder as a foreign Llama") from e
    source = info.get("source", {})
    data, train = info.get("mixln_config", {}).get("data", {}), info.get("mixln_config", {}).get("train", {})
    name = path.resolve().name
    meta = {"path": str(path), "run_name": name, "step": source.get("step"), "model": model.cfg.name,
            "scheme": model.norm_cfg.scheme, "layer_kinds": model.layer_kinds}
    tokenizer = path / "tokenizer.model"
    return Pretrained(model, name if meta["step"] is None else f"{name}, step {meta['step']}", meta,
                      tokenizer if tokenizer.is_file() else None, source.get("tokenizer_sha256"),
                      Path(data["dir"]) if data.get("dir") else None,
                      data.get("seq_len") or model.cfg.max_seq_len, train.get("micro_batch_size", 8),
                      train.get("eval_samples", 0))
