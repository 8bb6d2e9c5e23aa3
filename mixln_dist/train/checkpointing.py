"""Saving checkpoints crash-safely, and deciding where (and whether) a run resumes.

A checkpoint becomes visible only once it is whole: every rank writes its DeepSpeed files and RNG states,
all ranks meet at a barrier, and only then does rank 0 write trainer_state.json (the completion marker) and
move the `latest` pointer, both by atomic rename. A crash at any moment leaves the previous checkpoint as the
newest complete one. Old checkpoints beyond `train.keep_last` are deleted only after the new one is complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint import (CHECKPOINTS, CONFIG_FILE, STATE_FILE, CheckpointError, CheckpointRef, complete_checkpoints,
                          resolve, tag_for)
from ..config import Config, save_config, to_dict


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(engine, run_dir: Path, cfg: Config, step: int, trainer_state: dict, rank: int) -> CheckpointRef:
    """Collective: every rank calls it. Returns the complete checkpoint."""
    root = run_dir / CHECKPOINTS
    tag = tag_for(step)
    # universal_checkpoint_info lets ds_to_universal convert ZeRO-1/2 checkpoints for another world size.
    client = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}}
    engine.save_checkpoint(str(root), tag=tag, client_state=client, save_latest=False)
    torch.save(rng_state(), root / tag / f"rng_rank{rank}.pt")
    dist.barrier()  # every rank has written everything it owns
    ref = CheckpointRef(root, tag)
    if rank == 0:
        save_config(cfg, ref.path / CONFIG_FILE)
        _atomic_write(ref.path / STATE_FILE, json.dumps({**trainer_state, "step": step}, indent=2))
        _atomic_write(root / "latest", tag)
        prune(root, cfg.train.keep_last)
    dist.barrier()
    return ref


def prune(root: Path, keep_last: int) -> List[Path]:
    """Delete complete checkpoints (and their universal conversions) older than the newest keep_last."""
    removed = []
    for ref in complete_checkpoints(root)[:-keep_last]:
        for path in (ref.path, root / f"{ref.tag}.universal"):
            if path.exists():
                shutil.rmtree(path)
                removed.append(path)
    return removed


def load_rng(ref: CheckpointRef, rank: int) -> bool:
    path = ref.path / f"rng_rank{rank}.pt"
    if not path.is_file():  # resumed on more ranks than were saved: the new ranks keep their seeded state
        return False
    set_rng_state(torch.load(path, weights_only=False))
    return True


# Resuming -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumePlan:
    ref: CheckpointRef
    state: dict
    universal: bool  # the world size or ZeRO stage changed: load through a universal checkpoint

    @property
    def load_tag(self) -> str:
        return f"{self.ref.tag}.universal" if self.universal else self.ref.tag


def find_resume(cfg: Config, run_dir: Path) -> Optional[CheckpointRef]:
    existing = complete_checkpoints(run_dir / CHECKPOINTS)
    mode = cfg.train.resume
    if mode == "never":
        if existing:
            raise CheckpointError(
                f"{run_dir} already holds a run (checkpoints up to step {existing[-1].step}) and train.resume=never; "
                "continue it with train.resume=auto, or start elsewhere with another train.run_name"
            )
        return None
    if mode == "auto":
        return existing[-1] if existing else None
    return resolve(mode)


# Keys whose change makes a checkpoint a different model (an error), and data settings whose change would
# silently mix two runs' data orders (also an error).
SHAPE_KEYS = ("model", "norm")
DATA_KEYS = ("data.seq_len", "data.seed")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_changes(saved: Config, current: Config) -> dict:
    a, b = _flatten(to_dict(saved)), _flatten(to_dict(current))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume(ref: CheckpointRef, cfg: Config, world_size: int) -> ResumePlan:
    """Refuse a resume that would silently change the model or the data order; say what else changed."""
    saved_cfg, state = ref.config(), ref.state()
    changes = config_changes(saved_cfg, cfg)
    fatal = {k: v for k, v in changes.items() if k.split(".")[0] in SHAPE_KEYS or k in DATA_KEYS}
    fatal.pop("model.name", None)
    if fatal:
        lines = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in fatal.items())
        raise CheckpointError(
            f"cannot resume {ref.path} with a different model or data order ({lines}). Resume with the saved "
            f"settings (they are in {ref.path / CONFIG_FILE}), or start a new run with another train.run_name"
        )
    saved_stage, saved_world = state["zero_stage"], state["world_size"]
    universal = saved_stage > 0 and (saved_world != world_size or saved_stage != cfg.zero.stage)
    if saved_stage == 0 and cfg.zero.stage != 0:
        raise CheckpointError(
            f"{ref.path} was saved with zero.stage=0, which keeps no ZeRO shards to convert; resume it with "
            "zero=stage0 (any number of ranks)"
        )
    return ResumePlan(ref=ref, state=state, universal=universal)


def make_universal(plan: ResumePlan, rank: int) -> None:
    """Collective. Rank 0 converts the checkpoint with DeepSpeed's ds_to_universal (once; kept for reuse)."""
    target = plan.ref.root / plan.load_tag
    if rank == 0 and not (target / "zero").is_dir():
        tmp = plan.ref.root / f".{plan.load_tag}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(plan.ref.path),
               "--output_folder", str(tmp), "--num_extract_workers", "1", "--num_merge_workers", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CheckpointError(f"converting {plan.ref.path} to a universal checkpoint failed:\n{proc.stderr[-3000:]}")
        for name in (CONFIG_FILE, STATE_FILE):
            shutil.copy(plan.ref.path / name, tmp / name)
        os.replace(tmp, target)
    dist.barrier()
