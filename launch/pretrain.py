#!/usr/bin/env python
"""Pretrain a Mix-LN LLaMA with DeepSpeed ZeRO (mixln_dist/cli/pretrain.py; installed as `mixln-pretrain`).

    deepspeed launch/pretrain.py                                   # the default job (debug model, sample corpus)
    deepspeed --num_gpus 8 launch/pretrain.py model=llama_1b norm=mix zero=stage2 optim=paper
    torchrun --nproc_per_node 2 launch/pretrain.py train.steps=100
    python launch/pretrain.py --help
"""

from mixln_dist.cli.pretrain import main

if __name__ == "__main__":
    raise SystemExit(main())
