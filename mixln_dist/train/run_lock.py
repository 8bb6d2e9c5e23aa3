"""One run per directory. Rank 0 holds an exclusive lock on `<run_dir>/.lock` for the run's lifetime, so a second
start in the same directory is refused (instead of resuming from a checkpoint the first is still writing, pruning
its files and interleaving its logs). The file names the holder (host, pid, start time) for the message.

The lock is the kernel's (flock): it dies with its process, so a lock left by a killed run is stale by
construction; the next start takes it over and says whose it was. On NFS, flock is carried by the server's
locks (Linux clients map it to POSIX locks), which also end with the process or its host's lease.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import RunError

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: Optional[int] = None
        self._created_dir = False

    def acquire(self, log: Callable[[str], None] = print) -> None:
        self._created_dir = not self.path.parent.exists()
        while True:
            fd = self._open()
            self._lock(fd)
            # A run that failed to start removes its lock file again (release): make sure ours is still the one
            # at the path, or two runs could each hold a lock on a different file.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        self._claim(fd, log)

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunError(f"cannot create the run directory {self.path.parent} ({e.strerror}); choose a writable "
                           "train.out_dir (or MIXLN_HOME)") from e

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
                   f"{holder.get('started')}") if holder else "another process"
            raise RunError(f"{self.path.parent} is in use by a running training job ({who}); wait for it to end, "
                           "or start this run elsewhere with another train.run_name or train.out_dir") from None

    def _claim(self, fd: int, log: Callable[[str], None]) -> None:
        previous = _read(fd)
        if previous:
            log(f"taking over the lock of {self.path.parent} from a run that is no longer running (pid "
                f"{previous.get('pid')} on host {previous.get('host')}, started {previous.get('started')})")
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Clear the holder and let go. A run directory this lock created and nothing else wrote to (a start that
        failed its checks) is removed again, so a refused start leaves nothing behind."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        if self._created_dir and [p.name for p in self.path.parent.iterdir()] == [LOCK_FILE]:
            self.path.unlink()
            self.path.parent.rmdir()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
