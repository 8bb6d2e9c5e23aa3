"""The Dockerfiles pass hadolint and the shell scripts pass shellcheck, warnings included (both from the dev extra)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_SCRIPTS = sorted(str(p) for p in [*ROOT.glob("docker/*.sh"), *ROOT.glob("bench/*.sh"),
                                        *ROOT.glob("launch/slurm/*.sbatch"), ROOT / "setup.sh", ROOT / ".ci/run"]
                       if p.exists())


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def _clean(command: list) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfiles_pass_hadolint():
    _clean([_tool("hadolint"), "docker/Dockerfile", "docker/Dockerfile.cpu"])


def test_shell_scripts_pass_shellcheck():
    _clean([_tool("shellcheck"), *SHELL_SCRIPTS])
