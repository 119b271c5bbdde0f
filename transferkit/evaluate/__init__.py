"""Evaluation: loss / perplexity on labelled tokens and exact match of greedy generations."""

from .generation import generate_completions
from .metrics import exact_match, lm_loss
from .split import evaluate_split

__all__ = ["generate_completions", "exact_match", "lm_loss", "evaluate_split"]
