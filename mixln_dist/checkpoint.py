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
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from .config import Config, load_config
from .errors import CheckpointError, ConfigError
from .model import Transformer, build_model
from .serialization import load_plain, plain_data_only

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
        path = self.path / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
            raise CheckpointError(f"{path} is damaged ({type(e).__name__}: {e})") from e
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise CheckpointError(f"{path} is damaged: it is not a trainer state written by mixln_dist")
        return state

    def config(self) -> Config:
        try:
            return load_config(self.path / CONFIG_FILE)
        except ConfigError as e:
            raise CheckpointError(f"its config is damaged: {e}") from e

    def damage(self) -> Optional[str]:
        """What is wrong with this checkpoint, found without loading it, or None: an unreadable trainer_state.json
        or config.yaml, a file missing or of another size than when it was saved, a .pt file whose zip
        structure is broken (truncated). Flipped bytes inside a file are found only when it is loaded."""
        try:
            state, _ = self.state(), self.config()
        except CheckpointError as e:
            return str(e)
        for name, size in state.get("files", {}).items():
            path = self.path / name
            if not path.is_file():
                return f"{path} is missing"
            if path.stat().st_size != size:
                return f"{path} has {path.stat().st_size:,} bytes, but {size:,} when it was saved (truncated?)"
        for path in sorted(self.path.glob("*.pt")):
            try:
                zipfile.ZipFile(path).close()  # reads the central directory at the end of the file
            except (zipfile.BadZipFile, OSError) as e:
                return f"{path} is not a whole checkpoint file ({e})"
        return None


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
    (the newest complete one for the first two). A damaged checkpoint is an error that names what is wrong and
    offers the newest undamaged one before it."""
    path = Path(path)
    if TAG_RE.match(path.name) and path.is_dir():
        if not is_complete(path):
            raise CheckpointError(
                f"{path} is incomplete (no {STATE_FILE}): it was interrupted while saving; use an earlier "
                "checkpoint or the run directory, which picks the newest complete one"
            )
        ref = CheckpointRef(path.parent, path.name)
    else:
        root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
        found = complete_checkpoints(root)
        if not found:
            raise CheckpointError(f"no complete checkpoint under {path}; expected {root}/step_NNNNNNN/{STATE_FILE}")
        ref = found[-1]
    damage = ref.damage()
    if damage:
        earlier = [r for r in complete_checkpoints(ref.root) if r.step < ref.step and not r.damage()]
        offer = f"the newest undamaged one before it is {earlier[-1].path}" if earlier else "no earlier one is whole"
        raise CheckpointError(f"checkpoint {ref.path} is damaged: {damage}; {offer}")
    return ref


def newest_usable(root: Path, log: Callable[[str], None]) -> Optional[CheckpointRef]:
    """For train.resume=auto: the newest complete checkpoint that is not damaged. Each damaged one after it is
    reported loudly and moved aside to `<tag>.damaged` (kept for inspection, never deleted; a later save of the
    same step would otherwise overwrite it)."""
    for ref in reversed(complete_checkpoints(root)):
        damage = ref.damage()
        if damage is None:
            return ref
        aside = ref.root / f"{ref.tag}.damaged"
        n = 1
        while aside.exists():
            n += 1
            aside = ref.root / f"{ref.tag}.damaged-{n}"
        ref.path.rename(aside)
        log(f"WARNING: checkpoint {ref.path} is damaged ({damage}); moved it to {aside} and looking for an "
            "earlier one")
    return None


def consolidated_state_dict(ref: CheckpointRef) -> Dict[str, torch.Tensor]:
    """The full fp32 weights of a checkpoint of any ZeRO stage and world size, on the CPU, read as plain data."""
    damage = ref.damage()
    if damage:
        raise CheckpointError(f"{ref.path} is damaged: {damage}")
    stage = ref.state()["zero_stage"]
    if stage == 0:
        files = sorted(ref.path.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise CheckpointError(f"{ref.path} has no mp_rank_*_model_states.pt: not a DeepSpeed checkpoint")
        with plain_data_only(str(files[0])):
            module = load_plain(files[0], "model states")["module"]
        return {k: v.float() for k, v in module.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with plain_data_only(str(ref.path)), contextlib.redirect_stdout(io.StringIO()):  # it prints a line per file
        try:
            return get_fp32_state_dict_from_zero_checkpoint(str(ref.root), tag=ref.tag)
        except (RuntimeError, OSError, EOFError, KeyError, ValueError) as e:
            raise CheckpointError(f"DeepSpeed cannot consolidate {ref.path} ({type(e).__name__}: {e}); the "
                                  "checkpoint is damaged") from e


def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Tuple[Transformer, Config, CheckpointRef]:
    """Rebuild the trained model from a checkpoint: (fp32 model in eval mode, its config, the checkpoint)."""
    ref = resolve(path)
    cfg = ref.config()
    try:
        model = build_model(cfg.model, cfg.norm, device, consolidated_state_dict(ref))
    except RuntimeError as e:
        raise CheckpointError(f"{ref.path} does not match its own config.yaml: {e}") from e
    return model.eval(), cfg, ref
