"""Peak tensor memory of a piece of work, on the CPU as on a GPU.

On a GPU the caching allocator keeps the statistics (torch.cuda.max_memory_allocated). The CPU has no such
counter, and the process's RSS mixes in the allocator's reuse and fragmentation (train/distributed.py keeps freed
blocks), so `PeakMemory` counts the tensors themselves: every storage an operator returns while it is active is
added when it appears and subtracted when it is freed. The peak is over memory allocated inside the block, on top
of what existed before it (weights, optimizer states).

    with PeakMemory(device) as mem:
        step()
    mem.peak_bytes
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _StorageCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen = {}  # data_ptr -> weakref of the storages counted and still alive

    def _freed(self, ptr: int, nbytes: int) -> None:
        if self._seen.pop(ptr, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if ptr in self._seen or nbytes == 0:
                continue  # a view or an in-place result of something already counted (or of older memory)
            self._seen[ptr] = weakref.ref(storage, lambda _, p=ptr, n=nbytes: self._freed(p, n))
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out


class PeakMemory:
    """Peak bytes of tensor memory allocated within the block (by operators; not the allocator's slack)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak_bytes = 0
        self._counter = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._counter = _StorageCounter().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._counter.__exit__(*exc)
            self.peak_bytes = self._counter.peak
