"""Conversions between mixln_dist checkpoints and Hugging Face model folders."""
