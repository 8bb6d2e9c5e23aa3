"""Where this process sits in the job, from whoever started it: a launcher (torchrun, `deepspeed`), Slurm's
`srun`, or nobody (a world of one). Pure functions of the environment, so every case is tested without a cluster.

Under `srun` with no launcher in between, each task is one rank: RANK = SLURM_PROCID, WORLD_SIZE = the step's
task count, LOCAL_RANK = SLURM_LOCALID, and the rendezvous is the first node of the step at a port derived from
the job id, so two jobs sharing a node never pick the same one. Slurm's variables count only inside a job step
(SLURM_STEP_ID set): the batch script itself also carries SLURM_PROCID=0 and the job's SLURM_NTASKS, and a
`python launch/pretrain.py` run there directly is one process, not a rank of a world that never starts.

A launcher's variables win (`srun torchrun ...`, one task per node: torchrun numbers the ranks), but they must
fit the step: a world that is not a whole multiple of Slurm's tasks means two layers disagree on the job's
shape, and starting anyway would hang at the rendezvous or train the same data twice.
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping

from ..errors import ConfigError

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Set by torchrun's agent (and the elastic launcher of `deepspeed`) beside RANK: a launcher numbered the ranks.
LAUNCHER_MARKERS = ("TORCHELASTIC_RUN_ID", "GROUP_RANK", "CROSS_RANK")
PORT_BASE, PORT_SPAN = 10000, 20000  # 10000-29999: below Linux's ephemeral range (32768+), where clients bind
NOT_A_TASK_STEP = 4294967290  # Slurm's pseudo steps (batch, extern, interactive) are numbered from here up


def in_slurm_step(env: Mapping[str, str]) -> bool:
    step = env.get("SLURM_STEP_ID", "")
    return "SLURM_PROCID" in env and step.isdigit() and int(step) < NOT_A_TASK_STEP


def expand_hostlist(hostlist: str) -> List[str]:
    """Slurm's compressed host list as names: 'gpu[001-003,010],login1' -> gpu001 gpu002 gpu003 gpu010 login1."""
    hosts: List[str] = []
    for prefix, ranges, suffix, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]([^,]*)|([^,\[\]]+)", hostlist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{len(lo)}d}{suffix}")
    if not hosts:
        raise ConfigError(f"cannot read Slurm's node list {hostlist!r}; set MASTER_ADDR to the first node's address")
    return hosts


def expand_tasks_per_node(spec: str) -> List[int]:
    """Slurm's tasks per node: '2(x3),1' -> [2, 2, 2, 1]."""
    counts: List[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise ConfigError(f"cannot read Slurm's tasks per node {spec!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def slurm_port(job_id: str) -> int:
    return PORT_BASE + int(job_id) % PORT_SPAN


def rank_environment(env: Mapping[str, str]) -> Dict[str, str]:
    """The variables to add to `env` so that torch.distributed's env:// start finds this rank's place; {} when
    a launcher already set them or nobody did (the caller treats that as a world of one). Raises ConfigError when
    a launcher's and Slurm's view of the job contradict each other."""
    if not in_slurm_step(env):
        return {}
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    procid = int(env["SLURM_PROCID"])
    if "RANK" in env:
        _check_launcher_fits_slurm(env, tasks, procid)
        return {}
    node = int(env.get("SLURM_NODEID", "0"))
    per_node = expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "1")))
    out = {"RANK": str(procid), "WORLD_SIZE": str(tasks), "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
           "LOCAL_WORLD_SIZE": str(per_node[node] if node < len(per_node) else 1),
           "NODE_RANK": str(node)}
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", ""))
        out["MASTER_ADDR"] = expand_hostlist(nodes)[0] if nodes else "127.0.0.1"
    if "MASTER_PORT" not in env:
        out["MASTER_PORT"] = str(slurm_port(env.get("SLURM_JOB_ID", "0")))
    return out


def _check_launcher_fits_slurm(env: Mapping[str, str], tasks: int, procid: int) -> None:
    missing = [v for v in LAUNCHER_VARS if v not in env]
    if missing:
        raise ConfigError(f"RANK is set but {', '.join(missing)} is not: set all of {', '.join(LAUNCHER_VARS)} "
                          f"(as a launcher does), or none of them under srun, which then provides them")
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    by_launcher = any(m in env for m in LAUNCHER_MARKERS)
    if by_launcher and world % tasks:
        raise ConfigError(
            f"the launcher's WORLD_SIZE={world} is not a multiple of the Slurm step's {tasks} tasks: with one "
            f"launcher per task (srun --ntasks-per-node=1 torchrun ...), WORLD_SIZE is tasks x processes per task; "
            f"check --nnodes/--nproc-per-node against sbatch's --nodes/--ntasks-per-node")
    if not by_launcher and (rank, world) != (procid, tasks):
        raise ConfigError(
            f"RANK={rank} WORLD_SIZE={world} contradict Slurm (task {procid} of {tasks}): unset RANK, WORLD_SIZE "
            f"and LOCAL_RANK in the job script and let srun number the ranks, or start a launcher "
            f"(torchrun) per task")


def cuda_device_index(local_rank: int, visible: int) -> int:
    """This rank's GPU: its local rank among all visible GPUs, or the only one Slurm left it (--gpus-per-task=1
    or cgroup binding set CUDA_VISIBLE_DEVICES to a single device)."""
    if local_rank < visible:
        return local_rank
    if visible == 1:
        return 0
    raise ConfigError(f"local rank {local_rank} but only {visible} GPUs are visible to it: start one task (or "
                      f"launcher process) per GPU, e.g. srun --ntasks-per-node=GPUS --gpus-per-node=GPUS")
