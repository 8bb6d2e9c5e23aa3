"""The memory planner (mixln_dist/train/memory_plan.py, `mixln-plan`): its model states agree with DeepSpeed's own
estimators, its activations with the peak memory of real forward and backward passes, and every recipe plans.

The activation peaks are measured with torch's memory profiler on the CPU: the bytes allocated during one
micro-batch's forward and backward (the loss and activation checkpointing exactly as training applies them), the
gradients already allocated so that only activations and their transients count.
"""

import json
import os
import tempfile
import time

import pytest
import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from mixln_dist.cli import plan as plan_cli
from mixln_dist.config import compose
from mixln_dist.errors import EXIT_USER_ERROR
from mixln_dist.paths import package_file
from mixln_dist.train.memory_plan import GIB, activation_bytes, model_size, model_state_bytes, plan_memory

ZERO = {"stage1": ["zero=stage1"], "stage2": ["zero=stage2"], "stage2_offload": ["zero=stage2_offload"],
        "stage3": ["zero=stage3"], "stage3_offload_optimizer": ["zero=stage3", "zero.offload_optimizer=cpu"],
        "stage3_offload": ["zero=stage3_offload"]}
# The paper's recipes (experiment=mixln_*); the group also holds studies (cpu_norm_study: tests/study/).
RECIPES = sorted(p.stem for p in package_file("configs/experiment").glob("mixln_*.yaml"))


@pytest.fixture(scope="module")
def sizes():
    return {m: model_size(compose([f"model={m}"])) for m in ("llama_71m", "llama_1b", "llama_7b")}


@pytest.mark.parametrize("gpus", [1, 8])
@pytest.mark.parametrize("zero", ZERO)
@pytest.mark.parametrize("model", ["llama_71m", "llama_1b", "llama_7b"])
def test_model_states_agree_with_deepspeeds_estimators(model, zero, gpus, sizes):
    cfg = compose([f"model={model}", *ZERO[zero]])
    size, z = sizes[model], cfg.zero
    ours = model_state_bytes(cfg, size, gpus, "bf16")
    gpu = ours["parameters"] + ours["gradients"] + ours["optimizer"] + ours["gathered"]
    cpu = ours["cpu"] * gpus  # one node
    P, offload = size.parameters, z.offload_optimizer == "cpu"
    if z.stage == 3:
        ds_cpu, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
            P, size.largest_module_parameters, gpus, 1, offload, z.offload_param == "cpu", True, 1.0)
    else:
        ds_cpu, ds_gpu = estimate_zero2_model_states_mem_needs(P, gpus, 1, offload, 1.0)
    if z.stage == 1:
        # No ZeRO-1 estimator: DeepSpeed's BF16_Optimizer keeps the whole fp32 gradient where ZeRO-2 keeps the
        # partitioned 16- and 32-bit ones (docs/scale.md); the rest is ZeRO-2's.
        ds_gpu += 4 * P - (2 + 4) * P // gpus
    assert gpu == pytest.approx(ds_gpu, rel=0.10)
    if offload:
        # DeepSpeed's ZeRO-2 offload figure is at least 4 bytes per parameter per GPU, a fp32 copy of the model per
        # process while it loads; ours builds on the meta device and materialises on the GPU (docs/scale.md).
        expected = ds_cpu if z.stage == 3 else 16 * P
        assert cpu == pytest.approx(expected, rel=0.10)
        if z.stage == 2:
            assert ds_cpu == P * max(4 * gpus, 16)
    else:
        assert cpu == 0  # DeepSpeed's figure here is the host memory of loading the model: we never need it


def test_flops_per_token_is_the_stated_formula():
    cfg = compose(["model=llama_7b"])
    m = cfg.model
    # LLaMA-7B counted by hand: per layer 4 d^2 attention + 3 d f MLP + 2 norms; the final norm; the head.
    matmul = m.n_layers * (4 * m.dim**2 + 3 * m.dim * m.ffn_dim + 2 * m.dim) + m.dim + m.vocab_size * m.dim
    plan = plan_memory(cfg)
    assert plan.non_embedding_parameters == matmul
    assert plan.flops_per_token == 6 * matmul + 12 * m.n_layers * m.dim * cfg.data.seq_len


# Activations against real steps -------------------------------------------------------------------------------


def measured_peak_bytes(overrides, micro: int, mode: str, dtype=torch.float32) -> int:
    """Peak bytes allocated by one training micro-batch's forward and backward on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    from mixln_dist.evaluation import next_token_loss
    from mixln_dist.model import build_model
    from mixln_dist.train.activation_checkpointing import apply_activation_checkpointing

    cfg = compose(overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.norm).to(dtype)
    apply_activation_checkpointing(model, mode)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # allocated before: gradients are model states, not activations
    tokens = torch.randint(0, cfg.model.vocab_size, (micro, cfg.data.seq_len + 1))
    next_token_loss(model, tokens).backward()  # a first step: lazily allocated state is not counted
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        next_token_loss(model, tokens).backward()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.unlink(path)
    # "Total Allocated" counts what was allocated since profiling began and is still held.
    return max(e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]")


def check_activations(overrides, micro, mode, precision="fp32"):
    start = time.perf_counter()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    measured = measured_peak_bytes(overrides, micro, mode, dtype)
    predicted = activation_bytes(compose(overrides), micro, precision, mode, device="cpu")
    print(f"{' '.join(overrides)} micro {micro} checkpointing {mode} {precision}: measured {measured / 2**20:.1f} "
          f"MiB, predicted {predicted / 2**20:.1f} MiB ({predicted / measured - 1:+.1%}), "
          f"{time.perf_counter() - start:.1f} s")
    assert predicted == pytest.approx(measured, rel=0.25)


@pytest.mark.parametrize("micro", [2, 8])
@pytest.mark.parametrize("mode", ["none", "full"])
def test_activations_match_the_measured_peak_of_the_debug_model(micro, mode):
    check_activations(["model=debug", "data.seq_len=256"], micro, mode)


@pytest.mark.parametrize("case", [("bf16", "none", "mix"), ("bf16", "full", "mix"), ("fp32", "every_k", "mix"),
                                  ("fp32", "none", "pre"), ("fp32", "none", "post"), ("fp32", "none", "sandwich")])
def test_activations_match_across_precisions_checkpointing_and_schemes(case):
    precision, mode, norm = case
    check_activations(["model=debug", "data.seq_len=256", f"norm={norm}"], 4, mode, precision)


def test_activations_match_when_the_layers_outweigh_the_logits():
    """A small vocabulary and a wide MLP: the peak is in the layers' backward, not the loss's."""
    for mode in ("none", "full"):
        check_activations(["model=debug", "data.seq_len=256", "model.vocab_size=256", "model.ffn_dim=1024"], 8,
                          mode)


@pytest.mark.slow
@pytest.mark.parametrize("micro", [1, 4])
@pytest.mark.parametrize("mode", ["none", "full"])
def test_activations_match_the_measured_peak_of_llama_71m(micro, mode):
    check_activations(["model=llama_71m", "data.seq_len=256"], micro, mode)


# The plan and its command -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [["model=llama_1b", "zero=stage2"], ["experiment=mixln_13b"]])
def test_the_largest_micro_batch_is_the_largest_that_fits(overrides):
    base = plan_memory(compose(overrides), gpus_per_node=8, gpu_memory_gib=80)
    usable = 80 * GIB * 0.95 - GIB
    assert base.max_micro_batch > 0

    def total(micro):
        return plan_memory(compose([*overrides, f"train.micro_batch_size={micro}", "train.global_batch_size=null"]),
                           gpus_per_node=8, gpu_memory_gib=80).per_gpu_bytes["total"]

    assert total(base.max_micro_batch) <= usable < total(base.max_micro_batch + 1)


def test_the_json_plan_has_the_documented_keys(capsys):
    assert plan_cli.main(["model=llama_1b", "--gpus-per-node", "4", "--gpu-memory-gib=141", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {"parameters", "non_embedding_parameters", "flops_per_token", "per_gpu_bytes", "cpu_bytes",
            "max_micro_batch"} <= plan.keys()
    assert {"parameters", "gradients", "optimizer", "activations", "total"} <= plan["per_gpu_bytes"].keys()
    assert plan["gpus"] == 4 and plan["gpu_memory_bytes"] == 141 * GIB
    assert plan["per_gpu_bytes"]["total"] == sum(v for k, v in plan["per_gpu_bytes"].items() if k != "total")


@pytest.mark.parametrize("argv, message", [(["--gpus-per-node", "x"], "--gpus-per-node needs a number"),
                                           (["--nodes=0"], "--nodes must be positive")])
def test_a_bad_option_is_a_users_error(argv, message, capsys):
    assert plan_cli.main(argv) == EXIT_USER_ERROR
    assert message in capsys.readouterr().err


# Recipes --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_plans_and_fits_eight_80gb_gpus(recipe):
    cfg = compose([f"experiment={recipe}"])
    assert (cfg.data.name, cfg.data.seq_len, cfg.train.global_batch_size) == ("c4", 256, 512)
    assert (cfg.optim.weight_decay, cfg.optim.grad_clip, cfg.optim.schedule, cfg.optim.min_lr_ratio) == (
        0.0, 0.0, "cosine", 0.1)
    plan = plan_memory(cfg, gpus_per_node=8, gpu_memory_gib=80)
    assert plan.max_micro_batch >= cfg.train.micro_batch_size, plan.per_gpu_bytes
    twin = plan_memory(compose([f"experiment={recipe}", "norm=pre"]), gpus_per_node=8)
    assert twin.norm_layers == f"{cfg.model.n_layers} pre of {cfg.model.n_layers}"
    assert twin.parameters == plan.parameters


def test_the_7b_recipe_has_2_post_ln_layers_of_32_and_the_13b_offloads():
    assert plan_memory(compose(["experiment=mixln_7b"])).norm_layers == "2 post + 30 pre of 32"
    assert compose(["experiment=mixln_7b"]).optim.lr == 5e-4
    big = plan_memory(compose(["experiment=mixln_13b"]), gpus_per_node=8)
    assert (big.zero_stage, big.offload, big.per_gpu_bytes["optimizer"]) == (3, "optimizer cpu", 0)
    assert big.cpu_bytes == 16 * big.parameters  # the node holds every partition's fp32 states
