"""Evaluation: loss / perplexity, exact match of greedy generations, classification metrics."""

from .generation import generate_completions
from .metrics import accuracy, exact_match, macro_f1, mean_loss
from .split import evaluate_split

__all__ = ["generate_completions", "exact_match", "mean_loss", "accuracy", "macro_f1", "evaluate_split"]
