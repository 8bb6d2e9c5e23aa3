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
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from ..checkpoint import (CHECKPOINTS, CONFIG_FILE, STATE_FILE, CheckpointRef, complete_checkpoints, newest_usable,
                          rank_file, resolve, tag_for)
from ..config import Config, save_config, to_dict
from ..errors import CheckpointError, DivergenceError
from ..files import write_atomic
from ..serialization import load_plain, plain_data_only
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
    Returns the complete checkpoint. Refuses (on every rank, before writing anything) to save weights that are
    not finite or onto a disk without room for it."""
    root = run_dir / CHECKPOINTS
    tag = tag_for(step)
    if not _all_ranks(_weights_finite(engine)):
        raise DivergenceError(f"the weights at step {step} are not finite, so no checkpoint was written; the "
                              "newest checkpoint stays the last good one. Resume it with a lower optim.lr")
    _check_room(root)
    # universal_checkpoint_info lets ds_to_universal convert ZeRO-1/2 checkpoints for another world size.
    client = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}}
    ref = CheckpointRef(root, tag)
    try:
        engine.save_checkpoint(str(root), tag=tag, client_state=client, save_latest=False)
        torch.save({name: part.state_dict() for name, part in parts.per_rank.items()}, rank_file(ref.path, rank))
    except (OSError, RuntimeError) as e:  # a full disk surfaces as "unexpected pos" from torch's zip writer
        free = shutil.disk_usage(root).free if root.exists() else 0
        raise CheckpointError(f"writing checkpoint {ref.path} failed ({type(e).__name__}: {e}); {free / 2**30:.1f} "
                              f"GiB are free on its disk: free some (older runs, train.keep_last) and resume; the "
                              "previous checkpoint is intact") from e
    dist.barrier()  # every rank has written everything it owns
    if rank == 0:
        save_config(cfg, ref.path / CONFIG_FILE)
        files = {p.name: p.stat().st_size for p in sorted(ref.path.iterdir()) if p.is_file()}  # checked on resume
        state = {**facts, "step": step, "files": files,
                 "parts": {name: part.state_dict() for name, part in parts.shared.items()}}
        write_atomic(ref.path / STATE_FILE, json.dumps(state, indent=2))
        write_atomic(root / "latest", tag)
        prune(root, cfg.train.keep_last)
    dist.barrier()
    return ref


def _weights_finite(engine) -> bool:
    """Whether this rank's weights (its partition under ZeRO-3) hold only finite numbers."""
    checks = [torch.isfinite(t).all() for p in engine.module.parameters() if (t := getattr(p, "ds_tensor", p)).numel()]
    return bool(torch.stack(checks).all()) if checks else True  # one device synchronisation, not one per tensor


def _all_ranks(flag: bool) -> bool:
    value = torch.tensor([1.0 if flag else 0.0])
    if dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=_cpu_group())
    return value.item() == 1.0


def _cpu_group():
    """The process group for small CPU tensors: the default one on CPUs (gloo), a gloo group beside nccl."""
    from .distributed import control_group

    return control_group()


def _check_room(root: Path) -> None:
    """Refuse to start a save that cannot fit: the newest checkpoint's size is the estimate."""
    previous = complete_checkpoints(root)
    if not previous:
        return
    size = sum(p.stat().st_size for p in previous[-1].path.iterdir() if p.is_file())
    free = shutil.disk_usage(root).free
    if free < 1.05 * size:
        raise CheckpointError(f"{root} has {free / 2**30:.2f} GiB free, but a checkpoint takes {size / 2**30:.2f} "
                              "GiB; free some space (older runs, or a lower train.keep_last) and resume; nothing "
                              "was written")


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


def find_resume(cfg: Config, run_dir: Path, log: Callable[[str], None] = print) -> Optional[CheckpointRef]:
    """Where the run resumes (None: it starts fresh). Call it on one rank: with train.resume=auto it moves damaged
    checkpoints aside (mixln_dist.checkpoint.newest_usable)."""
    root = run_dir / CHECKPOINTS
    mode = cfg.train.resume
    if mode == "never":
        existing = complete_checkpoints(root)
        if existing:
            raise CheckpointError(
                f"{run_dir} already holds a run (checkpoints up to step {existing[-1].step}) and train.resume=never; "
                "continue it with train.resume=auto, or start elsewhere with another train.run_name"
            )
        return None
    if mode == "auto":
        return newest_usable(root, log)
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
        cmd = [sys.executable, "-m", "mixln_dist.train.to_universal", "--input_folder", str(plan.ref.path),
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


def restore(engine, plan: ResumePlan, parts: Parts, rank: int, same_world: bool) -> bool:
    """Load the engine and every part from `plan`, reading only plain data. Returns whether this rank's own parts
    were restored (False when it resumes on more ranks than were saved, or on another world size: then the
    caller reseeds). The caller sets the learning rate (set_lr_for_step)."""
    if plan.universal:
        make_universal(plan, rank)
    hyperparameters = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
    with plain_data_only(str(plan.ref.path)):
        try:
            load_path, _ = engine.load_checkpoint(str(plan.ref.root), tag=plan.load_tag)
        except (RuntimeError, OSError, EOFError, KeyError, ValueError) as e:
            raise CheckpointError(f"DeepSpeed cannot load {plan.ref.root / plan.load_tag} ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); it is damaged: "
                                  "resume from an earlier checkpoint with train.resume=PATH") from e
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {plan.ref.root / plan.load_tag}")
    repair_loaded_optimizer(engine.optimizer, hyperparameters)
    for name, part in parts.shared.items():
        part.load_state_dict(plan.state["parts"][name])
    own = rank_file(plan.ref.path, rank)
    if not (same_world and own.is_file()):
        return False
    saved = load_plain(own, "rank state")
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


def set_lr_for_step(engine, cfg: Config, step: int, scale: float = 1.0) -> None:
    """The schedule is a pure function of the config and the step (times `scale`, which rollbacks lower): set it
    from them rather than trusting the scheduler state a (possibly converted) checkpoint carried, which holds
    the old base rate, or DeepSpeed's, which does not move on a step it discarded."""
    sched, groups = engine.lr_scheduler, engine.optimizer.param_groups
    base = cfg.optim.lr * scale
    sched.base_lrs = [base] * len(groups)
    sched.last_epoch = step
    for group in groups:
        group["initial_lr"], group["lr"] = base, base * lr_factor(cfg.optim, cfg.train.steps)(step)
    sched._last_lr = [g["lr"] for g in groups]
