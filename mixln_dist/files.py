"""Crash-safe file writes, used for everything a run or a dataset records (configs, metadata, checkpoints'
markers): a reader sees the old file or the new one, never half of one, and a completed rename survives a crash."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def write_atomic(path: Union[str, Path], data: Union[bytes, str]) -> None:
    """Write under a temporary name in the same folder, fsync, rename over `path`, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(directory: Union[str, Path]) -> None:
    """Make renames in `directory` durable (a crash right after cannot bring back the old names)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
