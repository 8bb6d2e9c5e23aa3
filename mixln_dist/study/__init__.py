"""The CPU-scale norm-placement study (`launch/norm_study.py`, docs/results/cpu_norm_study.md): which runs it
makes (plan), what each run has produced so far (runs), and the report drawn from them (figures, report).

The runs themselves are the trainer's (`launch/pretrain.py`), the analyses `launch/analyze.py`'s and the
perplexities `launch/evaluate.py`'s; this package only lists them, finds their outputs and puts them side by side.
"""
