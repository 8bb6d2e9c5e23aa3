"""Saving checkpoints crash-safely, deciding where (and whether) a run resumes, and restoring everything.

A checkpoint holds the DeepSpeed engine's files and the trainer's stateful parts (mixln_dist.train.state):
shared parts in trainer_state.json, per-rank parts in rank<r>.pt. It becomes visible only once it is whole:
every rank writes its files, all ranks meet at a barrier, and only then does rank 0 write trainer_state.json
(the completion marker) and move the `latest` pointer, both by atomic rename. A crash at any moment leaves the
previous checkpoint as the newest complete one. Old checkpoints beyond `train.keep_last` are deleted only after
the new one is complete.

Restoring also repairs what DeepSpeed's loaders get wrong and sets the learning rate from the config, so a resumed
run continues exactly (and applies a changed optim.lr, which the start log reports).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from ..checkpoint import (CHECKPOINTS, CONFIG_FILE, STATE_FILE, CheckpointRef, complete_checkpoints, rank_file,
                          resolve, tag_for)
from ..config import Config, save_config, to_dict
from ..errors import CheckpointError
from ..files import write_atomic
from .optim import lr_factor
from .state import Stateful

# Keys whose change makes a checkpoint a different model (an error), and data settings whose change would
# silently mix two runs' data orders (also an error).
SHAPE_KEYS = ("model", "norm")
DATA_KEYS = ("data.seq_len", "data.seed")


@dataclass
class Parts:
    """What a checkpoint holds besides the engine: `shared` parts are equal on every rank (rank 0 saves them),
    `per_rank` parts are each rank's own."""

    shared: Dict[str, Stateful]
    per_rank: Dict[str, Stateful]


def save_checkpoint(engine, run_dir: Path, cfg: Config, step: int, facts: dict, parts: Parts,
                    rank: int) -> CheckpointRef:
    """Collective: every rank calls it. `facts` describe the run for later readers (world size, ZeRO stage...).
    Returns the complete checkpoint."""
    root = run_dir / CHECKPOINTS
    tag = tag_for(step)
    # universal_checkpoint_info lets ds_to_universal convert ZeRO-1/2 checkpoints for another world size.
    client = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}}
    engine.save_checkpoint(str(root), tag=tag, client_state=client, save_latest=False)
    ref = CheckpointRef(root, tag)
    torch.save({name: part.state_dict() for name, part in parts.per_rank.items()}, rank_file(ref.path, rank))
    dist.barrier()  # every rank has written everything it owns
    if rank == 0:
        save_config(cfg, ref.path / CONFIG_FILE)
        state = {**facts, "step": step, "parts": {name: part.state_dict() for name, part in parts.shared.items()}}
        write_atomic(ref.path / STATE_FILE, json.dumps(state, indent=2))
        write_atomic(root / "latest", tag)
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


# Resuming -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumePlan:
    ref: CheckpointRef
    state: dict  # trainer_state.json
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
    if "parts" not in state:
        raise CheckpointError(f"{ref.path} was written by an older mixln_dist (its {STATE_FILE} has no 'parts'); "
                              "resume it with the version that wrote it, or export it and start from it with "
                              "train.init_from")
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
            log = plan.ref.root / f"{plan.load_tag}.log"
            log.write_text(proc.stdout + proc.stderr)
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise CheckpointError(f"converting {plan.ref.path} to a universal checkpoint failed ({last}); the "
                                  f"converter's output is in {log}")
        for name in (CONFIG_FILE, STATE_FILE):
            shutil.copy(plan.ref.path / name, tmp / name)
        os.replace(tmp, target)
    dist.barrier()


def restore(engine, plan: ResumePlan, cfg: Config, parts: Parts, rank: int, same_world: bool) -> bool:
    """Load the engine and every part from `plan`. Returns whether this rank's own random state was restored
    (False when it resumes on more ranks than were saved, or on another world size: then the caller reseeds)."""
    if plan.universal:
        make_universal(plan, rank)
    hyperparameters = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
    load_path, _ = engine.load_checkpoint(str(plan.ref.root), tag=plan.load_tag)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {plan.ref.root / plan.load_tag}")
    repair_loaded_optimizer(engine.optimizer, hyperparameters)
    for name, part in parts.shared.items():
        part.load_state_dict(plan.state["parts"][name])
    set_lr_for_step(engine, cfg, plan.state["step"])
    own = rank_file(plan.ref.path, rank)
    if not (same_world and own.is_file()):
        return False
    saved = torch.load(own, weights_only=True)
    for name, part in parts.per_rank.items():
        part.load_state_dict(saved[name])
    return True


def repair_loaded_optimizer(optimizer, hyperparameters: List[dict]) -> None:
    """Undo two defects of DeepSpeed 0.19's ZeRO-3 universal-checkpoint loader (harmless elsewhere).

    1. It copies param group 0's hyperparameters onto every group, so the norm weights would start decaying:
       hyperparameters come from the config, the checkpoint only gives optimizer state.
    2. It gives every group's Adam state one shared `step` tensor; torch's Adam increments it in place once per
       group per step, so every group after the first would use a wrong bias correction.
    """
    for group, saved in zip(optimizer.param_groups, hyperparameters):
        group.update(saved)
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in inner.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def set_lr_for_step(engine, cfg: Config, step: int) -> None:
    """The schedule is a pure function of the config and the step: set it from them rather than trusting the
    scheduler state a (possibly converted) checkpoint carried, which holds the old base rate."""
    sched, groups = engine.lr_scheduler, engine.optimizer.param_groups
    factor = lr_factor(cfg.optim, cfg.train.steps)(step)
    sched.base_lrs = [cfg.optim.lr] * len(groups)
    sched.last_epoch = step
    for group in groups:
        group["initial_lr"], group["lr"] = cfg.optim.lr, cfg.optim.lr * factor
    sched._last_lr = [g["lr"] for g in groups]
