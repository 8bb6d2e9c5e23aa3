"""Stopping cleanly when asked: a scheduler's warning before its time limit (SIGUSR1), a kill (SIGTERM), Ctrl-C
(SIGINT), or the launcher that started this rank going away.

Each rank only records the request; at the next step boundary the ranks agree (one all-reduce of a flag on a CPU
process group, so a GPU step is not synchronised for it), and then every rank stops after the same step: the
trainer writes a checkpoint and the process exits 0. Further signals while it saves are reported and ignored, so
a second Ctrl-C cannot corrupt the checkpoint; SIGKILL still ends it at once (a checkpoint becomes visible only
when whole, so the previous one stays).

A rank also stops when its launcher exits: torchrun's agent or the deepspeed launcher's per-node process (its
parent) through the kernel's parent-death signal, and the `deepspeed` command above it, which in single-node
mode exits on SIGTERM without telling its children, by watching that the ancestors it started under still run.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from typing import Callable, List, Optional, Tuple

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# How a launcher process's command line starts: `python -m torch.distributed.run`, `.../bin/torchrun`,
# `python -u -m deepspeed.launcher.launch`, `python .../bin/deepspeed`.
LAUNCHER_MODULES = ("torch.distributed.run", "deepspeed.launcher.launch")
LAUNCHER_SCRIPTS = ("torchrun", "deepspeed")
WATCH_EVERY_S = 1.0


class StopRequests:
    def __init__(self, control_group=None, log: Callable[[str], None] = print):
        self.group = control_group  # None: the default group (gloo on CPUs)
        self.log = log
        self.reason: Optional[str] = None  # why this rank wants to stop
        self.stopping = False  # the ranks agreed; a checkpoint is being written
        self._previous = {}
        self._launchers = launcher_ancestors()
        self._next_watch = 0.0

    def __enter__(self) -> "StopRequests":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        if self.reason is not None:
            # Stopping: the checkpoint is written and the process is on its way out. A repeated signal that
            # arrives now (a second Ctrl-C, Slurm's follow-up SIGTERM) must not turn a clean stop into a
            # KeyboardInterrupt during shutdown, so the handlers stay and go on reporting it.
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is None:
            self.reason = name
            self.log(f"received {name}: stopping after this step with a checkpoint")
        else:
            self.log(f"received {name} again: still {'saving' if self.stopping else 'stopping'}; the checkpoint "
                     "will not be interrupted (SIGKILL ends the process without one)")

    def agreed(self) -> Optional[str]:
        """Collective: whether any rank wants to stop, and why (this rank's reason, or another's)."""
        self._watch_launchers()
        want = torch.tensor([1.0 if self.reason else 0.0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(want, op=dist.ReduceOp.MAX, group=self.group)
        if want.item() == 0:
            return None
        self.stopping = True
        return self.reason or "a stop request on another rank"

    def _watch_launchers(self) -> None:
        now = time.monotonic()
        if self.reason or now < self._next_watch:
            return
        self._next_watch = now + WATCH_EVERY_S
        for pid, started in self._launchers:
            if _start_time(pid) != started:
                self.reason = f"the launcher (pid {pid}) exited"
                self.log(f"{self.reason}: stopping after this step with a checkpoint")
                return


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when this process's parent exits (Linux prctl PR_SET_PDEATHSIG), when a launcher
    started us; our SIGTERM handler turns it into a clean stop. A no-op elsewhere."""
    if not sys.platform.startswith("linux") or not launcher_ancestors():
        return
    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it exited before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def launcher_ancestors() -> List[Tuple[int, str]]:
    """(pid, start time) of every ancestor process that is a launcher (torchrun, deepspeed), nearest first."""
    found, pid = [], os.getppid()
    while pid > 1:
        if _is_launcher(_argv(pid)):
            found.append((pid, _start_time(pid)))
        pid = _parent_of(pid)
    return found


def _stat(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name is in parentheses and may contain spaces: split after its closing one.
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _parent_of(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def _start_time(pid: int) -> Optional[str]:
    """Start time in clock ticks since boot: a pid reused by another process has another one."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def _is_launcher(argv: List[str]) -> bool:
    head = argv[:4]  # the interpreter, its options, then the module or script
    return any(a in LAUNCHER_MODULES for a in head) or any(os.path.basename(a) in LAUNCHER_SCRIPTS for a in head)


def _argv(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []
