"""Fixtures of the training tests."""

import pytest


@pytest.fixture(scope="module")
def env():
    """This process as a one-rank gloo world, as the trainer sets it up (a short timeout: a test must not hang)."""
    from mixln_dist.train.distributed import init_distributed

    return init_distributed("cpu", timeout_s=120)
