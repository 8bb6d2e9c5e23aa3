"""A small real corpus for the data tests: slices of the bundled Austen sample (about 300 kB)."""

import gzip
from pathlib import Path

import pytest

from .helpers import novel


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """train/a.txt (150 kB of Sense and Sensibility), train/b.txt.gz (100 kB of Pride and Prejudice) and
    val/c.txt (40 kB of Persuasion)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "train").mkdir()
    (root / "val").mkdir()
    (root / "train/a.txt").write_text(novel("sense", 150_000))
    with gzip.open(root / "train/b.txt.gz", "wt", encoding="utf-8") as f:
        f.write(novel("pride", 100_000))
    (root / "val/c.txt").write_text(novel("persuasion", 40_000))
    return root
