"""The Hugging Face side of a Mix-LN export: `configuration_mixln.py` and `modeling_mixln.py` are copied into every
exported folder whose model has a layer that is not plain Pre-LN, and loaded by transformers with
`trust_remote_code=True`. They import only torch and transformers, never mixln_dist.

Nothing is imported here: importing this package must not pull in transformers.
"""
