"""Training on the CPU reuses freed memory instead of page-faulting it in again every step."""

import subprocess
import sys
import textwrap

import pytest

from .helpers import child_env

# A few training steps of the default model on 4 x 256 tokens: its logits (4 x 256 x 8192 fp32 = 34 MB, as are
# their gradient and the softmax) exceed glibc's largest mmap threshold (32 MB).
PROBE = textwrap.dedent("""
    import resource, sys, torch
    import torch.nn.functional as F
    from mixln_dist.config import compose
    from mixln_dist.model import Transformer
    from mixln_dist.train.distributed import init_distributed, shutdown

    if sys.argv[1] == "trainer":  # the trainer's own process setup (a world of one on the CPU)
        init_distributed("cpu")
    torch.manual_seed(0)
    cfg = compose([])
    model = Transformer(cfg.model, cfg.norm)
    model.init_weights()
    optimizer = torch.optim.AdamW(model.parameters())
    tokens = torch.randint(0, cfg.model.vocab_size, (4, 257))

    def step():
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def usage():
        u = resource.getrusage(resource.RUSAGE_SELF)
        return u.ru_minflt, u.ru_maxrss

    for _ in range(3):
        step()
    faults, _ = usage()
    for _ in range(10):
        step()
    faults_after, _ = usage()
    for _ in range(40):
        step()
    print((faults_after - faults) / 10, usage()[1] / 1024)
    shutdown()
""")


def faults_per_step_and_peak_rss_mib(mode: str) -> tuple:
    # A clean environment: an earlier in-process test's rank variables would point it at that process's store.
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300,
                         env=child_env())
    assert out.returncode == 0, out.stderr[-2000:]
    faults, peak = out.stdout.strip().splitlines()[-1].split()  # the last line: DeepSpeed may print before it
    return float(faults), float(peak)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_step_memory_is_reused_not_faulted_in_again():
    default_faults, default_peak = faults_per_step_and_peak_rss_mib("default")
    kept_faults, kept_peak = faults_per_step_and_peak_rss_mib("trainer")
    print(f"page faults per step: glibc default {default_faults:.0f}, kept {kept_faults:.0f}; "
          f"peak RSS after 53 steps {default_peak:.0f} MiB, kept {kept_peak:.0f} MiB")
    big = 4 * 256 * 8192 * 4 // 4096  # pages of one logits-sized tensor
    assert default_faults > 2 * big  # unmapped at free, zero-filled and faulted in again at the next step
    assert kept_faults < default_faults / 5  # about 15x fewer; the rest is the heap still settling
    # The price: freed blocks stay in the heap, and some fragment (its growth levels off within ~100 steps).
    assert kept_peak < 1.5 * default_peak
