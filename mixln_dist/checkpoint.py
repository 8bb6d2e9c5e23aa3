"""The on-disk layout of a training run, and reading checkpoints back without a process group.

    <run_dir>/
      config.yaml                   the configuration of the latest start
      metrics.jsonl, tensorboard/   logs
      checkpoints/
        latest                      tag of the newest *complete* checkpoint (DeepSpeed's pointer format)
        step_0000300/               DeepSpeed's files (any ZeRO stage) plus ours:
          config.yaml               the resolved config that produced it
          rank<r>.pt                each rank's own stateful parts (its random generators): tensors only
          trainer_state.json        the run's facts (step, world size, ZeRO stage...) and its shared stateful
                                    parts (progress, data-loader position); written last, after every rank
                                    finished writing, so its presence means the checkpoint is complete
        step_0000300.universal/     a DeepSpeed universal checkpoint, made on demand to resume on another
                                    number of ranks or ZeRO stage

Export, analysis and evaluation read checkpoints through `load_model`, which consolidates the fp32 weights of
any ZeRO stage with DeepSpeed's own machinery, so they never need the training world size.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import torch

from .config import Config, load_config
from .errors import CheckpointError
from .model import Transformer, build_model

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
TAG_RE = re.compile(r"^step_(\d{7,})$")


def tag_for(step: int) -> str:
    return f"step_{step:07d}"


def rank_file(checkpoint: Path, rank: int) -> Path:
    return checkpoint / f"rank{rank}.pt"


@dataclass(frozen=True)
class CheckpointRef:
    root: Path  # the `checkpoints` folder DeepSpeed saves into
    tag: str

    @property
    def path(self) -> Path:
        return self.root / self.tag

    @property
    def step(self) -> int:
        return int(TAG_RE.match(self.tag).group(1))

    def state(self) -> dict:
        return json.loads((self.path / STATE_FILE).read_text())

    def config(self) -> Config:
        return load_config(self.path / CONFIG_FILE)


def is_complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and (path / CONFIG_FILE).is_file()


def complete_checkpoints(root: Path) -> List[CheckpointRef]:
    """Every complete checkpoint under a `checkpoints` folder, oldest first."""
    if not root.is_dir():
        return []
    refs = [CheckpointRef(root, p.name) for p in root.iterdir() if TAG_RE.match(p.name) and is_complete(p)]
    return sorted(refs, key=lambda r: r.step)


def resolve(path: Union[str, Path]) -> CheckpointRef:
    """A run directory, its `checkpoints` folder, or one checkpoint folder -> the checkpoint it designates
    (the newest complete one for the first two)."""
    path = Path(path)
    if TAG_RE.match(path.name) and path.is_dir():
        if not is_complete(path):
            raise CheckpointError(
                f"{path} is incomplete (no {STATE_FILE}): it was interrupted while saving; use an earlier "
                "checkpoint or the run directory, which picks the newest complete one"
            )
        return CheckpointRef(path.parent, path.name)
    root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    found = complete_checkpoints(root)
    if not found:
        raise CheckpointError(f"no complete checkpoint under {path}; expected {root}/step_NNNNNNN/{STATE_FILE}")
    return found[-1]


def consolidated_state_dict(ref: CheckpointRef) -> Dict[str, torch.Tensor]:
    """The full fp32 weights of a checkpoint of any ZeRO stage and world size, on the CPU."""
    stage = ref.state()["zero_stage"]
    if stage == 0:
        files = sorted(ref.path.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise CheckpointError(f"{ref.path} has no mp_rank_*_model_states.pt: not a DeepSpeed checkpoint")
        module = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
        return {k: v.float() for k, v in module.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per file
        return get_fp32_state_dict_from_zero_checkpoint(str(ref.root), tag=ref.tag)


def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Tuple[Transformer, Config, CheckpointRef]:
    """Rebuild the trained model from a checkpoint: (fp32 model in eval mode, its config, the checkpoint)."""
    ref = resolve(path)
    cfg = ref.config()
    try:
        model = build_model(cfg.model, cfg.norm, device, consolidated_state_dict(ref))
    except RuntimeError as e:
        raise CheckpointError(f"{ref.path} does not match its own config.yaml: {e}") from e
    return model.eval(), cfg, ref
