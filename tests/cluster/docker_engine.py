"""A private Docker engine for tests, and the project's CPU image built in it from nothing but Debian's packages
and the pip sources this host is configured with (no registry is needed or reached).

    from cluster.docker_engine import DockerEngine, missing_requirements
    with DockerEngine(tmp_path / "docker") as engine:
        base = engine.debian_base()              # debootstrap -> docker import (docker/debian-base.sh)
        image = engine.build_cpu_image(base)     # docker/Dockerfile.cpu, pip sources served on loopback
        engine.docker("run", "--rm", "--network", "none", image, "model")

The daemon has no bridge, no NAT and no iptables rules: containers get only ``host`` or ``none`` networking. The
host's pip configuration may name local folders (find-links, ``file://`` indexes); a build cannot read host
paths, so each such folder is served over HTTP on 127.0.0.1 for the build (``--network host``). A host behind a
TLS-inspecting proxy trusts extra CA certificates (Debian's ``/usr/local/share/ca-certificates``); they are
copied into a temporary build context's ``docker/certs/``, never into the checkout.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from cluster.service import Service
from train.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
DOCKER = "/usr/bin/docker"  # Debian's client: another one earlier on PATH may refuse the legacy builder
EXTRA_CA = Path("/usr/local/share/ca-certificates")


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (dockerd, debootstrap)"
    missing = [p for p in (DOCKER, "/usr/sbin/dockerd", "/usr/sbin/debootstrap") if not Path(p).exists()]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install -y --no-install-recommends docker.io debootstrap"
    return None


def _local_pip_sources() -> tuple[list[str], list[str]]:
    """The host's pip find-links folders and file:// index roots (each a folder holding simple/)."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    links, indexes = [], []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        values = value.strip().strip("'\"").split()
        if key.endswith("find-links"):
            links += [v for v in values if Path(v).is_dir()]
        elif key.endswith("index-url"):
            indexes += [v.removeprefix("file://") for v in values if v.startswith("file://")]
    # An index's pages link to ../../files/...: serve the folder above simple/, not simple/ itself.
    roots = [str(Path(i).parent) for i in indexes if Path(i).name == "simple" and Path(i).is_dir()]
    return sorted(set(links)), sorted(set(roots))


class DockerEngine(Service):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.sock = f"unix://{self.root}/docker.sock"
        self.env = os.environ | {"DOCKER_HOST": self.sock}
        self._procs: list[subprocess.Popen] = []
        self._daemon: subprocess.Popen | None = None
        self._log = None

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self._log = open(self.root / "dockerd.log", "w")
        self._daemon = subprocess.Popen(
            ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-forward=false",
             "--ip-masq=false", "--data-root", f"{self.root}/data", "--exec-root", f"{self.root}/exec",
             "-H", self.sock, "--pidfile", f"{self.root}/dockerd.pid"], stdout=self._log, stderr=subprocess.STDOUT)
        for _ in range(60):
            if subprocess.run([DOCKER, "info"], env=self.env, capture_output=True).returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"dockerd did not answer; its log:\n{(self.root / 'dockerd.log').read_text()[-3000:]}")

    def stop(self):
        for proc in [*self._procs, self._daemon]:
            if proc and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        if self._log:
            self._log.close()
        netns = self.root / "exec" / "netns" / "default"
        if netns.exists():
            subprocess.run(["umount", str(netns)], capture_output=True)  # a leftover nsfs mount of dockerd

    def docker(self, *args, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} ... exited {result.returncode}:\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def debian_base(self, name: str = "local/debian:bookworm-base") -> str:
        subprocess.run(["bash", str(REPO / "docker/debian-base.sh"), name], env=self.env, check=True,
                       capture_output=True, timeout=600)
        return name

    def _serve(self, folder: str) -> str:
        port = free_port()
        self._procs.append(subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", folder],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(100):  # pip must not find the server still starting
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}/"
            time.sleep(0.1)
        raise RuntimeError(f"the file server for {folder} did not start on port {port}")

    def build_cpu_image(self, base: str, tag: str = "mixln:cpu") -> str:
        context = self.root / "context"
        shutil.rmtree(context, ignore_errors=True)
        context.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, context / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.crt")
        for name in ("mixln_dist", "docker"):
            shutil.copytree(REPO / name, context / name, ignore=ignore)
        for crt in EXTRA_CA.glob("*.crt"):
            shutil.copy2(crt, context / "docker" / "certs" / crt.name)
        links, index_roots = _local_pip_sources()
        args = ["--build-arg", f"BASE_IMAGE={base}", "--build-arg", "TORCH_INDEX_URL="]
        if links:
            args += ["--build-arg", "PIP_FIND_LINKS=" + " ".join(self._serve(f) for f in links)]
        if index_roots:
            urls = " ".join(self._serve(r) + "simple/" for r in index_roots)
            args += ["--build-arg", f"PIP_EXTRA_INDEX_URL={urls}", "--build-arg", "PIP_TRUSTED_HOST=127.0.0.1"]
        self.docker("build", "--network", "host", "-f", str(context / "docker/Dockerfile.cpu"), "-t", tag, *args,
                    str(context), timeout=1800)
        return tag

    def image_size(self, tag: str) -> int:
        return int(self.docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
