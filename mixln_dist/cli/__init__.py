"""The entry points, one module each with `main(argv=None) -> int`, installed as console scripts (`mixln-pretrain`,
`mixln-prepare-data`, `mixln-train-tokenizer`, `mixln-model`, `mixln-evaluate`, `mixln-export-hf`,
`mixln-analyze`) and wrapped by the checkout's `launch/*.py`. Each catches the project's error family only
(mixln_dist.errors): a user error is one line and exit code 2; anything else keeps its traceback."""
