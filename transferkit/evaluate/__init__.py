"""Evaluation: what a model scores, what the untrained base scores by prompting, and what was forgotten.

    split.py        evaluate_split: loss / perplexity, generation metrics, classification metrics, per slice
    metrics.py      the metrics themselves (hand-checked formulas) and batched per-example scoring
    generation.py   greedy, batched generation for chat prompts
    task_metrics.py task-metric hooks (`json`, or the user's own function)
    baseline.py     the prompting baseline: one strategy per (schema, architecture)
    forgetting.py   general ability (perplexity / topic probe) and forgetting
    comparison.py   the headline metric and the comparison with the best baseline
    assessment.py   the pipeline `train` and `eval` share: baseline → general ability → forgetting → verdict
    plots.py        reliability diagram
"""

from .generation import generate_completions
from .metrics import accuracy, exact_match, macro_f1, mean_loss
from .split import evaluate_split

__all__ = ["generate_completions", "exact_match", "mean_loss", "accuracy", "macro_f1", "evaluate_split"]
