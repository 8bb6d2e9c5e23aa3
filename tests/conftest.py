"""Test-wide environment: offline, CPU DeepSpeed, bounded waits. Set before anything imports deepspeed."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_CORPORA = REPO_ROOT.parent / "shared" / "corpora"
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def shared_corpora() -> Path:
    """../shared/corpora beside the checkout, where it exists (skips cleanly elsewhere)."""
    if not SHARED_CORPORA.is_dir():
        pytest.skip(f"{SHARED_CORPORA} is not present on this machine")
    return SHARED_CORPORA
