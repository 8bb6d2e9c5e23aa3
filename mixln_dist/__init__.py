"""mixln_dist: pretraining LLaMA-style models with Mix-LN normalization on DeepSpeed ZeRO."""

__version__ = "0.1.0"
