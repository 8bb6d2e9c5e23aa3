"""Where a process sits in the job, from the launcher's or Slurm's variables (mixln_dist/train/launch_env.py).
The environments are the ones Slurm 22.05 set in real jobs here (tests/cluster/test_slurm.py runs them for real)."""

import pytest

from mixln_dist.errors import ConfigError
from mixln_dist.train.launch_env import (cuda_device_index, expand_hostlist, expand_tasks_per_node,
                                         rank_environment, slurm_port)

# `srun` task 1 of `sbatch --nodes=2 --ntasks-per-node=1`, as printed by a real job.
SRUN_TASK = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_STEP_NODELIST": "node[1-2]",
             "SLURM_LOCALID": "0", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
             "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
             "SLURM_TASKS_PER_NODE": "1(x2)"}
# The batch script of that job (no step): a plain `python` there is one process.
BATCH_SHELL = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
               "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_TASKS_PER_NODE": "1(x2)"}


def test_an_srun_task_is_the_rank_slurm_numbered_with_the_first_node_as_master():
    assert rank_environment(SRUN_TASK) == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                                           "NODE_RANK": "1", "MASTER_ADDR": "node1", "MASTER_PORT": "11234"}


def test_two_tasks_on_one_node_share_it():
    env = dict(SRUN_TASK, SLURM_STEP_NODELIST="localhost", SLURM_NODEID="0", SLURM_LOCALID="1",
               SLURM_STEP_TASKS_PER_NODE="2")
    got = rank_environment(env)
    assert (got["RANK"], got["LOCAL_RANK"], got["LOCAL_WORLD_SIZE"], got["MASTER_ADDR"]) == ("1", "1", "2", "localhost")


def test_the_batch_shell_is_not_a_rank():
    assert rank_environment(BATCH_SHELL) == {}
    assert rank_environment(dict(BATCH_SHELL, SLURM_STEP_ID="4294967291")) == {}  # Slurm's pseudo steps
    assert rank_environment({}) == {}


def test_the_job_scripts_master_address_and_port_win():
    got = rank_environment(dict(SRUN_TASK, MASTER_ADDR="10.0.0.7", MASTER_PORT="29500"))
    assert "MASTER_ADDR" not in got and "MASTER_PORT" not in got and got["RANK"] == "1"


def test_two_jobs_never_share_a_port_and_it_stays_below_the_ephemeral_range():
    assert slurm_port("1234") != slurm_port("1235")
    assert all(10000 <= slurm_port(str(j)) < 32768 for j in (0, 1, 19999, 20000, 10**7 + 3))


def test_a_launcher_inside_a_task_numbers_the_ranks():
    # srun --ntasks-per-node=1 torchrun --nproc-per-node=4: torchrun's rank 6 runs in Slurm's task 1.
    env = dict(SRUN_TASK, RANK="6", WORLD_SIZE="8", LOCAL_RANK="2", TORCHELASTIC_RUN_ID="1234")
    assert rank_environment(env) == {}


def test_a_launcher_world_that_does_not_fit_the_step_is_refused():
    env = dict(SRUN_TASK, RANK="1", WORLD_SIZE="3", LOCAL_RANK="0", TORCHELASTIC_RUN_ID="1234")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=3 is not a multiple of the Slurm step's 2 tasks.*--nnodes"):
        rank_environment(env)


def test_hand_set_ranks_that_contradict_slurm_are_refused():
    with pytest.raises(ConfigError, match=r"RANK=0 WORLD_SIZE=2 contradict Slurm \(task 1 of 2\): unset RANK"):
        rank_environment(dict(SRUN_TASK, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0"))
    assert rank_environment(dict(SRUN_TASK, RANK="1", WORLD_SIZE="2", LOCAL_RANK="0")) == {}  # agreeing is fine
    with pytest.raises(ConfigError, match=r"RANK is set but WORLD_SIZE, LOCAL_RANK is not"):
        rank_environment(dict(SRUN_TASK, RANK="1"))


@pytest.mark.parametrize("hostlist, hosts", [
    ("localhost", ["localhost"]),
    ("node[1-2]", ["node1", "node2"]),
    ("gpu[001-003,010],login1", ["gpu001", "gpu002", "gpu003", "gpu010", "login1"]),
    ("a[8-10]-ib,b7", ["a8-ib", "a9-ib", "a10-ib", "b7"]),
])
def test_slurm_host_lists_expand(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


def test_tasks_per_node_expand():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    with pytest.raises(ConfigError, match="tasks per node"):
        expand_tasks_per_node("two")


def test_each_rank_finds_its_gpu():
    assert cuda_device_index(3, 8) == 3
    assert cuda_device_index(3, 1) == 0  # Slurm bound the task to one GPU
    with pytest.raises(ConfigError, match="local rank 3 but only 2 GPUs"):
        cuda_device_index(3, 2)


PEERS = [(0, "node1", "10.200.0.1"), (1, "node2", "10.200.0.2")]


def test_a_peer_gloo_lost_is_named_by_its_rank_and_host():
    from mixln_dist.train.distributed import lost_peer_message

    # What gloo raised in tests/cluster/test_slurm.py when node2 was killed.
    said = RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[10.200.0.2]:5330. This is typically caused by a remote worker crashing.")
    assert lost_peer_message(said, PEERS).startswith("lost rank 1 (node2, 10.200.0.2): its process or node died")
    timed_out = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 60000ms for recv")
    assert "waited the full train.dist_timeout_s=60" in lost_peer_message(timed_out, PEERS, timeout_s=60)
    assert lost_peer_message(RuntimeError("shape mismatch"), PEERS) is None  # any other error keeps its traceback
