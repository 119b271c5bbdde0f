"""Training: the fit() loop (`loop.py`), its loss, schedule, checkpoints and run directory.

Kept free of imports so `evaluate` can use `train.loss` without a cycle;
the entry point is `transferkit.train.loop.train`.
"""
