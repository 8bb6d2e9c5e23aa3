"""The run configuration's schema: one typed dataclass per group, every key commented.

Groups (`model`, `norm`, `data`, `optim`, `zero`, `train`) are composed from `configs/` (mixln_dist.config.compose);
`model` and `norm` are the model package's own dataclasses, so the model can be built from them alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from ..model.args import ModelConfig, NormConfig

@dataclass
class TokenizerConfig:
    path: str = MISSING  # the SentencePiece .model: written here when trained, read from here when adopted
    adopt: bool = False  # true: use an existing .model (a LLaMA or T5 tokenizer) instead of training one
    model_type: str = "bpe"  # bpe | unigram
    vocab_size: int = 8192  # pieces; when adopting, the adopted model must have exactly this many
    character_coverage: float = 0.9995  # share of characters given their own piece; the rest fall back to bytes
    max_sentences: int = 2_000_000  # lines sampled (seeded reservoir) from the training text to train on
    seed: int = 0  # which lines are sampled


@dataclass
class DataConfig:
    name: str = MISSING
    # Training text: local files, globs or directories (.txt, .jsonl, .json, .parquet, optionally .gz), or
    # "hf:NAME[:CONFIG[:SPLIT]]" for a hub dataset (streamed; needs a network).
    train: List[str] = MISSING
    # Validation text from a separate source (same forms); when empty, val_fraction of the training documents
    # is held out instead. Exactly one of the two must be given.
    validation: List[str] = field(default_factory=list)
    val_fraction: float = 0.0
    text_field: str = "text"  # column holding the text in .jsonl/.parquet/hub sources
    sample_by: str = "paragraph"  # how .txt files split into documents: line | paragraph | document
    dir: str = MISSING  # where the prepared shards and their metadata live
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    seq_len: int = 256  # tokens per training sample (the model sees seq_len inputs and seq_len targets)
    seed: int = 1234  # the per-epoch permutation of training samples
    split_seed: int = 42  # which documents val_fraction holds out
    num_proc: int = 0  # CPU cores for tokenizer training and tokenization (SentencePiece threads); 0 = all
    shard_tokens: int = 100_000_000  # tokens per shard file
    max_train_tokens: int = 0  # stop reading training text after the document that reaches this; 0 = all
    max_val_tokens: int = 0  # the same for the validation split (either kind); 0 = all
    auto_prepare: bool = False  # train the tokenizer and write the shards at start if they are missing


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # never applied to norm weights or biases
    grad_clip: float = 1.0  # global L2 norm; 0 disables clipping (the paper's scripts)
    impl: str = "auto"  # auto | torch | fused | cpu: DeepSpeed's fused/CPU Adam when its ops build, else torch's
    schedule: str = "cosine"  # cosine | constant | wsd (warmup-stable-decay)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine and wsd decay to lr * min_lr_ratio
    decay_fraction: float = 0.2  # wsd: the final fraction of steps spent decaying


@dataclass
class ZeroConfig:
    stage: int = 2  # 0 (plain data parallel) to 3
    offload_optimizer: str = "none"  # none | cpu | nvme
    offload_param: str = "none"  # none | cpu | nvme (stage 3 only)
    nvme_path: str = "/local_nvme"
    zero_init: bool = False  # stage 3: build the model already partitioned (deepspeed.zero.Init)
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    stage3_max_live_parameters: int = 1_000_000_000


@dataclass
class GuardConfig:
    """What protects a run from numerical blow-ups (docs/reliability.md)."""

    # A step whose loss or gradients are not finite is never applied. After this many such steps in a row the
    # run stops (keeping its checkpoints, none with bad weights); 0 = never stop.
    max_bad_steps: int = 10
    # A loss spike: a step's loss more than spike_zscore standard deviations above the mean of the last
    # spike_window applied steps. off: not watched | skip: its update is not applied | rollback: the run goes
    # back to its newest checkpoint and skips the data from there to the spike. Watching reads every step's loss
    # (on a GPU, one synchronisation per step).
    spike_action: str = "off"
    spike_window: int = 50
    spike_zscore: float = 6.0
    spike_lr_factor: float = 1.0  # rollback: the learning rate is multiplied by this after each rollback
    max_rollbacks: int = 3  # rollback: the run stops after this many


@dataclass
class TrainConfig:
    out_dir: str = "${home:runs}"  # relative to $MIXLN_HOME (default: the current directory)
    # The run directory is out_dir/run_name. The default names the model and its norm placement (debug-mix0.25,
    # llama_7b-mix-post2, debug-pre), so runs that differ in placement never share a directory.
    run_name: str = "${default_run_name:}"
    seed: int = 0
    steps: int = 1000  # optimizer steps of the whole run (the LR schedule spans them)
    stop_at: int = 0  # end this invocation after this step, with a checkpoint (time-limited jobs); 0 = at `steps`
    micro_batch_size: int = 8  # sequences per rank per forward pass
    grad_accum_steps: Optional[int] = None  # derived from global_batch_size when null
    global_batch_size: Optional[int] = None  # = micro x accumulation x data-parallel ranks; derived when null
    precision: str = "auto"  # auto (bf16 on GPUs that have it, else fp32) | bf16 | fp32
    activation_checkpointing: str = "none"  # none | full | every_k (every ac_every_k-th layer)
    ac_every_k: int = 2
    device: str = "auto"  # auto | cpu | cuda
    log_interval: int = 10
    eval_interval: int = 100
    eval_samples: int = 0  # validation samples per evaluation; 0 = the whole validation split
    save_interval: int = 500
    keep_last: int = 2  # checkpoints kept in the run directory (the newest ones)
    resume: str = "auto"  # auto (newest complete checkpoint in the run directory) | never | a checkpoint path
    # Start a fresh run from these weights (a Hugging Face folder or one of our checkpoints) instead of a random
    # init; the shape must match, the norm placement need not. Ignored when resuming.
    init_from: str = ""
    tensorboard: bool = True
    progress_bar: bool = True
    diag_interval: int = 0  # per-layer gradient norms every N steps; 0 = off
    dist_timeout_s: int = 600  # a rank that stops answering fails the run after this long
    # torch.compile each decoder block (train/compile.py; DeepSpeed's engine.compile() under ZeRO-3). The first step
    # compiles: tens of seconds on a CPU. Off by default for that start-up cost and because inductor needs a C++
    # compiler on a CPU (and Triton on a GPU); docs/benchmarks.md has what it buys.
    compile: bool = False
    guard: GuardConfig = field(default_factory=GuardConfig)


@dataclass
class Config:
    model: ModelConfig = MISSING
    norm: NormConfig = field(default_factory=NormConfig)
    data: DataConfig = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


