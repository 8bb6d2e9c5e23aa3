#!/usr/bin/env python
"""Pretrain a Mix-LN LLaMA with DeepSpeed ZeRO.

    deepspeed launch/pretrain.py                                   # the default job (debug model, sample corpus)
    deepspeed --num_gpus 8 launch/pretrain.py model=llama_1b norm=mix zero=stage2 optim=paper
    torchrun --nproc_per_node 2 launch/pretrain.py train.steps=100
    python launch/pretrain.py --help
"""

import sys

from mixln_dist.train.launch import main

if __name__ == "__main__":
    sys.exit(main())
