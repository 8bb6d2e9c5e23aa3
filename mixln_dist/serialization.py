"""Reading checkpoint files as plain data only, so a file someone hands you cannot run code when it is loaded.

Our own files (each rank's stateful parts, weights) load with `torch.load(weights_only=True)`. DeepSpeed's
loaders (engine.load_checkpoint, zero_to_fp32, ds_to_universal) call `torch.load(weights_only=False)`; while
they run, `plain_data_only()` forces weights-only loading anyway (torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD) and
allows exactly the few DeepSpeed classes its checkpoint files contain. A pickle that names anything else is
refused with CheckpointError, as is a file that is truncated or not a checkpoint at all.
"""

from __future__ import annotations

import os
import pickle
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Union

import torch

from .errors import CheckpointError

FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def deepspeed_checkpoint_classes() -> List[type]:
    """What DeepSpeed 0.19's checkpoint files pickle besides tensors and containers (found by loading every kind
    it writes, ZeRO 0-3 in fp32 and bf16, universal conversions included, with nothing else allowed)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


@contextmanager
def plain_data_only(where: str) -> Iterator[None]:
    """Within it, every torch.load (DeepSpeed's included) reads plain data and the allowed DeepSpeed classes;
    `where` (the checkpoint being read) names the culprit in the error."""
    previous = os.environ.get(FORCE_ENV)
    os.environ[FORCE_ENV] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_checkpoint_classes()):
            yield
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{where}: {refusal(e)}") from e
    finally:
        if previous is None:
            os.environ.pop(FORCE_ENV, None)
        else:
            os.environ[FORCE_ENV] = previous


def load_plain(path: Union[str, Path], what: str = "checkpoint file") -> Any:
    """torch.load of a file of ours, plain data only; any failure is a CheckpointError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: {refusal(e)}") from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{what} {path} cannot be read ({type(e).__name__}: {_first_line(e)}); it is damaged "
                              "or not a checkpoint file") from e


def refusal(e: Exception) -> str:
    names = re.findall(r"GLOBAL ([\w.]+)", str(e))
    what = f" ({', '.join(dict.fromkeys(names))})" if names else ""
    return (f"holds Python objects that are not plain data{what}; refusing to load it, since unpickling could run "
            "code. Checkpoints written by mixln_dist never contain such objects")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
