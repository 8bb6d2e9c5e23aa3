"""Process-group setup for every way a job is started: `deepspeed`, `torchrun`, `srun`, or plain `python` (one
rank).

Chooses nccl on GPUs and gloo on CPUs, bounds every collective by a timeout (a hung rank fails the job instead
of stalling it for gloo's default 30 minutes), and avoids DeepSpeed's CPU shared-memory op, which only
inference all-reduce uses but which costs a 30-60 s compile at first start.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from ..errors import ConfigError, RunError
from .launch_env import cuda_device_index, rank_environment
from .preemption import die_with_parent

_CONTROL_GROUP = None  # see control_group()
_PEERS: list = []  # (rank, host, address) of every rank, for naming the one that was lost (see lost_peer_message)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def select_accelerator(device: str) -> None:
    """Tell DeepSpeed which accelerator to use before it is imported: `cpu` forces the CPU even on a GPU host."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        os.environ["DS_ACCELERATOR"] = "cpu"
    elif device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but torch sees no CUDA device; use train.device=auto or cpu")
        os.environ["DS_ACCELERATOR"] = "cuda"


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # from glibc's malloc.h
_heap_kept = False  # whether keep_freed_cpu_memory is in force in this process


def keep_freed_cpu_memory() -> None:
    """Stop glibc from handing large freed blocks back to the kernel, so that training on the CPU reuses them.

    Every step allocates and frees the same large tensors (the default job's logits alone are 16 x 256 x 8192 x 4
    bytes = 134 MB). glibc serves blocks above 32 MB with a fresh mmap and unmaps them when freed, so every step
    zero-filled and faulted them in again: a fifth of the default job's CPU time went to the kernel. With mmap off
    and the heap trimmed only when over 2 GiB lies free at its top, freed blocks are reused (the default job: 23%
    more tokens/s, identical losses). The price is some fragmentation that levels off: about 15% more peak RSS
    (tests/train/test_cpu_memory.py). GPU runs are unaffected: only CPU training calls this. A no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    global _heap_kept
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    _heap_kept = True


@contextmanager
def freed_cpu_memory_returned() -> Iterator[None]:
    """glibc's default heap for a while (large blocks mmapped, and unmapped when freed), then the policy of
    keep_freed_cpu_memory again. For building a model partitioned (zero.Init): each full tensor is allocated once
    and freed once its partition is kept, and under the kept heap those freed blocks stayed resident between the
    partitions, so a 1B model built by 2 ranks peaked at 6.7 GB per rank, more than the whole fp32 model (5.4 GB),
    instead of 3.5 GB (tests/train/test_zero3_scale.py)."""
    if not _heap_kept:
        yield
        return
    libc = ctypes.CDLL("libc.so.6")
    for option, value in ((M_MMAP_MAX, 65536), (M_MMAP_THRESHOLD, 128 * 1024), (M_TRIM_THRESHOLD, 128 * 1024)):
        libc.mallopt(option, value)
    try:
        yield
    finally:
        keep_freed_cpu_memory()


def init_distributed(device: str = "auto", timeout_s: int = 600) -> DistEnv:
    """Create (or join) the process group and return this rank's place in it."""
    select_accelerator(device)
    os.environ.update(rank_environment(os.environ))  # under srun: Slurm's task numbers (launch_env.py)
    alone = "RANK" not in os.environ
    if alone:  # plain `python launch/pretrain.py`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from deepspeed.utils import logger as ds_logger

    if os.environ.get("MIXLN_DS_VERBOSE") != "1":  # DeepSpeed logs pages of INFO per start; ours say what matters
        ds_logger.setLevel(logging.WARNING)

    on_cpu = get_accelerator().device_name() == "cpu"
    if on_cpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        keep_freed_cpu_memory()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
    if on_cpu and "OMP_NUM_THREADS" not in os.environ:
        # The deepspeed launcher leaves threads unset, so every rank would use every core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    for attempt in range(3):
        try:
            deepspeed.init_distributed(
                dist_backend="gloo" if on_cpu else "nccl",
                auto_mpi_discovery=False,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
            break
        except (RuntimeError, OSError) as e:
            if "address already in use" not in str(e).lower() and "eaddrinuse" not in str(e).lower():
                raise
            if alone and attempt < 2:  # the port we picked was taken in the meantime: pick another
                os.environ["MASTER_PORT"] = str(free_port())
                continue
            raise RunError(
                f"the rendezvous port {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} is taken, "
                f"probably by another job on this host; give the launcher a free one (deepspeed --master_port P, "
                f"torchrun --master-port P, or MASTER_PORT=P), e.g. {free_port()}") from e
    global _CONTROL_GROUP
    # Small CPU tensors (stop requests, checkpoint agreement) go through gloo: beside nccl, a group of their own,
    # so that exchanging them never waits for, or synchronises with, the GPU.
    _CONTROL_GROUP = None if on_cpu else torch.distributed.new_group(backend="gloo")
    die_with_parent()
    _PEERS[:] = _gather_peers()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_cpu:
        dev = torch.device("cpu")
    else:
        dev = torch.device("cuda", cuda_device_index(local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    return DistEnv(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=local_rank,
        local_world_size=local_world,
        device=dev,
    )


def _address_towards(host: str) -> str:
    """This host's address on the route to `host` (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return "?"


def _gather_peers() -> list:
    """Every rank's host name and address, as its peers see it: gloo and NCCL name a failed peer only by address."""
    import torch.distributed as dist

    mine = (dist.get_rank(), socket.gethostname(), _address_towards(os.environ.get("MASTER_ADDR", "127.0.0.1")))
    peers = [None] * dist.get_world_size()
    dist.all_gather_object(peers, mine, group=_CONTROL_GROUP)
    return peers


def lost_peer_message(error: BaseException, peers=None, timeout_s: int = 0) -> Optional[str]:
    """A one-line account of a collective that failed because a peer went away, or None for any other error.
    gloo reports the peer's address ("Read error [10.200.0.2]:8383: Connection reset by peer"); that names the
    rank(s) on that host."""
    text = str(error)
    peers = _PEERS if peers is None else peers
    lost = "Connection reset by peer" in text or "Connection closed by peer" in text or "Broken pipe" in text
    timed_out = "Timed out" in text or "timed out" in text
    if not (lost or timed_out):
        return None
    addresses = set(re.findall(r"\[([0-9A-Fa-f:.]+)\]:\d+", text))
    named = [f"rank {r} ({host}, {addr})" for r, host, addr in peers if addr in addresses]
    what = f"lost {', '.join(named)}" if named else "lost contact with a peer rank"
    why = (f"a collective waited the full train.dist_timeout_s={timeout_s}" if timed_out and timeout_s
           else "its process or node died, or the network between them failed")
    return (f"{what}: {why}. The run stops; its newest checkpoint is intact: resubmit (train.resume=auto) once "
            f"the node is healthy. gloo/NCCL said: {text.splitlines()[0][:300]}")


def control_group():
    """The process group for small CPU tensors: None (the default group, gloo) on CPUs, a gloo group beside nccl."""
    return _CONTROL_GROUP


def run_on_main(fn, env: DistEnv):
    """Run fn on rank 0 while the other ranks wait, and return its result on every rank. If it raises, every rank
    raises the same exception, so no rank is left waiting at a barrier until the timeout."""
    import torch.distributed as dist

    outcome = [None, None]  # (result, exception)
    if env.is_main:
        try:
            outcome[0] = fn()
        except Exception as e:  # handed to every rank below, then raised there
            outcome[1] = e
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(outcome, src=0, group=_CONTROL_GROUP)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def shutdown(clean: bool = True) -> None:
    """Leave the process group. `clean` (every rank got here normally): first meet at a barrier, so that every
    collective a rank queued has completed, and collect garbage while the interpreter is whole. Otherwise gloo's
    worker threads can still hold async-work objects (ZeRO-3 prefetches, for one) whose tensors are freed
    during interpreter shutdown, which aborts the process ("terminate called without an active exception").
    After a failure skip the barrier: a peer that died would leave it waiting for the timeout."""
    import gc

    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if clean:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()
