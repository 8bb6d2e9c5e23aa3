"""`mixln-model` (`python -m mixln_dist.cli.model`): a model's size and per-layer norm placement, from the same
overrides as training, without allocating its weights.

    mixln-model model=llama_7b norm=mix norm.post_layers=2
"""

from __future__ import annotations

from typing import Optional, Sequence

from .common import parse_config_cli, run


def main(argv: Optional[Sequence[str]] = None) -> int:
    cli = parse_config_cli(argv, __doc__, {})

    def body() -> None:
        import torch

        from ..config import compose
        from ..model import Transformer, summarize

        cfg = compose(cli.overrides, cli.config_dir)
        with torch.device("meta"):  # shapes only: a 13B model costs no memory here
            model = Transformer(cfg.model, cfg.norm)
        print(summarize(model))

    return run(body)


if __name__ == "__main__":
    raise SystemExit(main())
