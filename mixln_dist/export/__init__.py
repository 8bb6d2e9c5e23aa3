"""Conversions between mixln_dist checkpoints and Hugging Face model folders, proven by logits equality.

    export_checkpoint("runs/debug-mix", "hf/debug-mix")       # any ZeRO stage -> verified HF folder
    save_hf(state_dict, model_cfg, norm_cfg, "hf/x", ...)      # the same from in-memory weights
    load_hf("hf/x") -> (state_dict, model_cfg, norm_cfg)       # import (Llama or exported Mix-LN); no transformers
    import_hf_model("hf/llama", norm=NormConfig("mix"))        # our model, optionally with another norm placement
    save_hf(..., layout="official")                            # the official Mix-LN code's weight names instead

Layering: keys (weight names) and hf_config (config fields) are pure; convert works on state dicts; tokenizer
converts the SentencePiece model; verify loads an export with transformers and compares it with ours; official
reads and writes the official Mix-LN code's layout; from_checkpoint adds DeepSpeed consolidation. transformers is
imported only when exporting or verifying.
"""

from .convert import (DTYPES, LAYOUTS, LOGIT_TOLERANCE, ExportError, ExportResult, import_hf_model, load_hf,
                      read_hf_config, save_hf)
from .from_checkpoint import export_checkpoint
from .hf_config import LLAMA, MIXLN, HFConfigError, SpecialTokens, from_hf_fields, hf_fields, model_type
from .keys import from_hf_llama, from_official, to_hf_llama, to_official
from .verify import Verification, greedy, verify_export

__all__ = [
    "DTYPES",
    "LLAMA",
    "LOGIT_TOLERANCE",
    "MIXLN",
    "ExportError",
    "ExportResult",
    "HFConfigError",
    "LAYOUTS",
    "SpecialTokens",
    "Verification",
    "export_checkpoint",
    "from_hf_fields",
    "from_hf_llama",
    "from_official",
    "greedy",
    "hf_fields",
    "import_hf_model",
    "load_hf",
    "model_type",
    "read_hf_config",
    "save_hf",
    "to_hf_llama",
    "to_official",
    "verify_export",
]
