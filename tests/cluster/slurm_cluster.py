"""A real Slurm cluster on this one machine, for tests: Debian's slurmctld, slurmd and munge, no systemd, every
file (config, state, spool, logs, pid files, munge socket) under one temporary folder.

Three layouts:

- ``single``: one node, ``localhost``.
- ``ports``: two nodes (``node1``, ``node2``) on one host, two slurmds told apart by their ports.
- ``netns``: two nodes, each in its own network namespace (``node1`` = 10.200.0.1, which also runs slurmctld,
  ``node2`` = 10.200.0.2) joined by a veth pair named ``eth1`` on both sides, each with its own hostname and a
  private /etc/hosts that maps the two names. The root namespace routes that subnet as unreachable, so nothing
  addressed to it can leave the machine through the default route.

API::

    from cluster.slurm_cluster import SlurmCluster, missing_requirements   # tests/ is on sys.path (conftest)

    reason = missing_requirements(netns=False)       # None, or why this machine cannot run it (for pytest.skip)
    with SlurmCluster(tmp_path / "slurm", layout="single", cpus_per_node=2) as cluster:
        job = cluster.submit(script, "--nodes=1", "--ntasks=2", env=os.environ | {...}, cwd=tmp_path)
        info = cluster.wait(job, timeout_s=300)      # JobInfo: state, exit_code, restarts, stdout (log path)
        assert info.state == "COMPLETED" and info.exit_code == 0, cluster.explain(job)
        cluster.wait_running(job); cluster.signal(job, "USR1")  # as Slurm does before a time limit (batch shell)
        cluster.client("squeue")                   # any Slurm client command, run where slurmctld is reachable
        cluster.run_on(2, ["python", "-c", "..."])  # netns: a command inside node2's namespace (Popen)

``env`` (SLURM_CONF) is what a client needs; ``client`` runs inside node1's namespace in the ``netns`` layout.
``stop()`` (also on leaving the ``with``) ends every daemon this object started, by pid, and deletes the
namespaces and the guard route, whatever state the cluster is in. Jobs stay known for ``MinJobAge`` = 300 s after
they end, so ``wait`` can poll with ``scontrol show job`` instead of ``sbatch --wait`` (which polls every few
seconds). Impossible requests fail at submission (``EnforcePartLimits=ALL``) instead of pending forever.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from cluster.service import Service
from train.helpers import free_port

PACKAGES = {"slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client", "munged": "munge"}
NETNS_PACKAGES = {"ip": "iproute2", "nsenter": "util-linux", "unshare": "util-linux"}
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
SUBNET = "10.200.0"  # the netns layout's addresses; never routed out of the machine (see _netns_up)
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


def _which(tool: str) -> Optional[str]:
    found = shutil.which(tool)
    if found:
        return found
    for d in SBIN:
        if os.access(os.path.join(d, tool), os.X_OK):
            return os.path.join(d, tool)
    return None


def missing_requirements(netns: bool = False) -> Optional[str]:
    """Why a cluster cannot start here (for pytest.skip), or None. Lists the Debian packages to install."""
    if os.geteuid() != 0:
        return "the Slurm cluster tests start daemons as root (and network namespaces); run them as root"
    tools = dict(PACKAGES, **(NETNS_PACKAGES if netns else {}))
    missing = sorted({pkg for tool, pkg in tools.items() if _which(tool) is None})
    if missing:
        return (f"missing Debian packages: {' '.join(missing)} (apt-get install --no-install-recommends "
                f"{' '.join(missing)}; .ci/run installs them)")
    return None


@dataclass
class JobInfo:
    job_id: str
    state: str  # Slurm's JobState: PENDING, RUNNING, COMPLETED, FAILED, ...
    exit_code: int  # of the batch script (ExitCode=N:signal)
    signal: int
    restarts: int  # how often the job was requeued
    stdout: Optional[Path]  # the job's log
    fields: Dict[str, str]  # everything `scontrol show job -o` printed

    def log(self) -> str:
        return self.stdout.read_text(errors="replace") if self.stdout and self.stdout.exists() else ""


class SlurmCluster(Service):
    def __init__(self, root: Path, layout: str = "single", cpus_per_node: int = 2, mem_mb: int = 4000):
        if layout not in ("single", "ports", "netns"):
            raise ValueError(f"layout must be single, ports or netns, not {layout!r}")
        self.root = Path(root).resolve()
        self.layout = layout
        self.cpus_per_node = cpus_per_node
        self.mem_mb = mem_mb
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.hosts_file = self.root / "hosts"
        tag = f"{os.getpid() % 100000}"
        self.namespaces = [f"mxs{tag}a", f"mxs{tag}b"]  # unique per test process: helpers may run side by side
        self._procs: List[subprocess.Popen] = []
        self._munged_pid: Optional[int] = None
        self._netns = False
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # --- start and stop ---------------------------------------------------------------------------------

    def start(self) -> None:
        for d in ("state", "spool", "log", "run", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        if self.layout == "netns":
            self._netns_up()
        self._write_conf()
        node_count = 1 if self.layout == "single" else 2
        ctld = [_which("slurmctld"), "-D", "-f", str(self.conf)]
        slurmd = [_which("slurmd"), "-D", "-f", str(self.conf)]
        if self.layout == "single":
            self._spawn("slurmctld", ctld)
            self._spawn("slurmd", slurmd)
        elif self.layout == "ports":
            self._spawn("slurmctld", ctld)
            self._spawn("slurmd-node1", slurmd + ["-N", "node1"])
            self._spawn("slurmd-node2", slurmd + ["-N", "node2"])
        else:
            self._spawn("slurmctld", self._in_node(1, ctld))
            self._spawn("slurmd-node1", self._in_node(1, slurmd))
            self._spawn("slurmd-node2", self._in_node(2, slurmd))
        self._wait_idle(node_count)

    def stop(self) -> None:
        """End every daemon this object started (SIGTERM, then SIGKILL after 10 s) and remove the namespaces."""
        pids = []
        for pidfile in sorted((self.root / "run").glob("*.pid")):
            try:
                pids.append(int(pidfile.read_text().strip()))
            except (OSError, ValueError):
                pass
        pids += [p.pid for p in self._procs]
        if self._munged_pid:
            pids.append(self._munged_pid)
        for pid in pids:
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self._procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            _kill(pid, signal.SIGKILL)
        self._procs.clear()
        self._munged_pid = None
        if self._netns:
            self._netns_down()

    def _spawn(self, name: str, cmd: Sequence[str]) -> None:
        out = open(self.root / "log" / f"{name}.out", "wb")
        self._procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            stdin=subprocess.DEVNULL, start_new_session=True))
        out.close()

    def _start_munge(self) -> None:
        """A private munged (own key, socket and pid file under root), so that parallel clusters do not share one."""
        d = self.root / "munge"
        key = d / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(d, 0o700)
        os.chmod(key, 0o400)
        pidfile = d / "munged.pid"
        subprocess.run([_which("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                        f"--pid-file={pidfile}", f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'seed'}"],
                       check=True, capture_output=True, timeout=30)
        self._munged_pid = int(pidfile.read_text().strip())

    def _write_conf(self) -> None:
        r = self.root
        ctld_port = free_port()
        lines = [
            "ClusterName=mixlnci",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            # cred_expire: how long a requeued job waits before it starts again (the default 120 s, whose
            # credential slurmd must first forget; starting sooner fails with "Job credential revoked").
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"SlurmctldPort={ctld_port}",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/run/slurmctld.pid", f"SlurmdPidFile={r}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd-%n.log",
            # No cgroups: the plain process tracker works in a VM without systemd and inside namespaces.
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",  # trust the CPU counts below, whatever the hardware says
            "MpiDefault=none", "ReturnToService=2", "EnforcePartLimits=ALL", "JobRequeue=1",
            "SlurmdTimeout=30", "InactiveLimit=0", "KillWait=5", "MinJobAge=300",
        ]
        node = f"CPUs={self.cpus_per_node} RealMemory={self.mem_mb} State=UNKNOWN"
        if self.layout == "single":
            lines += ["SlurmctldHost=localhost", f"SlurmdPort={free_port()}", f"NodeName=localhost {node}",
                      "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]
        elif self.layout == "ports":
            lines += ["SlurmctldHost=localhost"]
            lines += [f"NodeName=node{i} NodeHostname=localhost NodeAddr=127.0.0.1 Port={free_port()} {node}"
                      for i in (1, 2)]
            lines += ["PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP"]
        else:
            lines += [f"SlurmctldHost=node1({SUBNET}.1)", "SlurmdPort=6818"]
            lines += [f"NodeName=node{i} NodeAddr={SUBNET}.{i} {node}" for i in (1, 2)]
            lines += ["PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP"]
        self.conf.write_text("\n".join(lines) + "\n")

    def _wait_idle(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = self.client("sinfo", "-h", "-N", "-o", "%T", check=False).stdout
            if out.split().count("idle") == count:
                return
            if any(p.poll() is not None for p in self._procs):
                break
            time.sleep(0.3)
        raise RuntimeError(f"Slurm did not come up ({count} idle nodes expected):\n{self.daemon_logs()}")

    # --- network namespaces -----------------------------------------------------------------------------

    def _netns_up(self) -> None:
        self._netns_down()
        self._netns = True
        a, b = self.namespaces
        va, vb = f"{a}v", f"{b}v"
        for cmd in (["netns", "add", a], ["netns", "add", b],
                    ["link", "add", va, "type", "veth", "peer", "name", vb],
                    ["link", "set", va, "netns", a], ["link", "set", vb, "netns", b],
                    ["-n", a, "link", "set", va, "name", "eth1"], ["-n", b, "link", "set", vb, "name", "eth1"],
                    ["-n", a, "addr", "add", f"{SUBNET}.1/24", "dev", "eth1"],
                    ["-n", b, "addr", "add", f"{SUBNET}.2/24", "dev", "eth1"],
                    ["-n", a, "link", "set", "lo", "up"], ["-n", b, "link", "set", "lo", "up"],
                    ["-n", a, "link", "set", "eth1", "up"], ["-n", b, "link", "set", "eth1", "up"],
                    # The root namespace has a default route: without this, a connection from it to the
                    # subnet would leave the machine through the gateway.
                    ["route", "replace", "unreachable", f"{SUBNET}.0/24"]):
            subprocess.run(["ip", *cmd], check=True, capture_output=True, timeout=30)
        self.hosts_file.write_text(f"127.0.0.1 localhost\n{SUBNET}.1 node1\n{SUBNET}.2 node2\n")

    def _netns_down(self) -> None:
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)  # takes its veth end along
        subprocess.run(["ip", "route", "del", "unreachable", f"{SUBNET}.0/24"], capture_output=True, timeout=30)
        self._netns = False

    def _in_node(self, i: int, cmd: Sequence[str]) -> List[str]:
        """cmd as host node<i>: its network namespace, hostname and /etc/hosts. nsenter, not `ip netns exec`,
        which mounts a fresh /sys without the cgroup mounts slurmd checks for."""
        return ["nsenter", f"--net=/run/netns/{self.namespaces[i - 1]}", "unshare", "--uts", "--mount",
                "sh", "-c", 'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"',
                str(self.hosts_file), f"node{i}", *cmd]

    def run_on(self, i: int, cmd: Sequence[str], **popen) -> subprocess.Popen:
        """Start cmd on node i (netns layout: inside its namespace; otherwise on this host)."""
        popen.setdefault("env", self.env)
        return subprocess.Popen(self._in_node(i, cmd) if self.layout == "netns" else list(cmd), **popen)

    # --- clients and jobs ---------------------------------------------------------------------------------

    def client(self, *args: str, check: bool = True, env: Optional[dict] = None,
               cwd: Optional[Path] = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sbatch, squeue, scontrol, scancel, sinfo) where slurmctld is reachable."""
        cmd = list(args)
        if self.layout == "netns":
            cmd = self._in_node(1, cmd)
        env = dict(env if env is not None else self.env, SLURM_CONF=str(self.conf))
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout_s)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done

    def submit(self, script: Path, *sbatch_args: str, env: Optional[dict] = None, cwd: Optional[Path] = None,
               script_args: Sequence[str] = ()) -> str:
        """sbatch the script (the submitter's environment travels with the job, as sbatch does); the job id."""
        out = self.client("sbatch", "--parsable", *sbatch_args, str(script), *script_args, env=env, cwd=cwd)
        return out.stdout.strip().split(";")[0]

    def info(self, job_id: str) -> Optional[JobInfo]:
        done = self.client("scontrol", "show", "job", "-o", job_id, check=False)
        if done.returncode != 0 or "JobId=" not in done.stdout:
            return None
        fields = {}
        for token in done.stdout.split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:
                fields[key] = value
        code, _, sig = fields.get("ExitCode", "0:0").partition(":")
        stdout = fields.get("StdOut")
        return JobInfo(job_id, fields.get("JobState", "?"), int(code or 0), int(sig or 0),
                       int(fields.get("Restarts", "0")), Path(stdout) if stdout else None, fields)

    def wait(self, job_id: str, timeout_s: float = 300, poll_s: float = 0.5) -> JobInfo:
        """Wait until the job has ended for good (a requeued job counts as running on) and return its record."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.info(job_id)
            if info is None:
                raise RuntimeError(f"Slurm forgot job {job_id}\n{self.daemon_logs()}")
            if info.state in FINAL_STATES:
                return info
            if time.monotonic() > deadline:
                self.client("scancel", job_id, check=False)
                raise TimeoutError(f"job {job_id} still {info.state} after {timeout_s} s\n{self.explain(job_id)}")
            time.sleep(poll_s)

    def wait_running(self, job_id: str, timeout_s: float = 120, poll_s: float = 0.2) -> JobInfo:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.info(job_id)
            if info is not None and info.state == "RUNNING":
                return info
            if info is not None and info.state in FINAL_STATES:
                raise RuntimeError(f"job {job_id} ended before it was seen running\n{self.explain(job_id)}")
            time.sleep(poll_s)
        raise TimeoutError(f"job {job_id} did not start within {timeout_s} s\n{self.explain(job_id)}")

    def signal(self, job_id: str, sig: str = "USR1", batch: bool = True) -> None:
        """Send a signal as Slurm's --signal=B:SIG@T does before the time limit: to the batch shell (batch=True),
        or to every task of every step."""
        self.client("scancel", f"--signal={sig}", *(["--batch"] if batch else []), job_id)

    def explain(self, job_id: str) -> str:
        """The job's record, its log and the daemons' logs: what a failed assertion should show."""
        info = self.info(job_id)
        parts = [f"job {job_id}: {info.fields if info else 'unknown to slurmctld'}"]
        if info:
            parts.append(f"--- job log {info.stdout}:\n{info.log()[-6000:]}")
        parts.append(self.daemon_logs())
        return "\n".join(parts)

    def daemon_logs(self, tail_chars: int = 3000) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {f.name}:\n{f.read_text(errors='replace')[-tail_chars:]}")
        return "\n".join(parts)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
