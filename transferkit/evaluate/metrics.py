"""Metrics on tokenized data and on generated text."""

from __future__ import annotations

import contextlib
import math

import torch

from ..data.batching import collate
from ..data.tokenize import Tokenized
from ..train.loss import token_loss_sum


@torch.no_grad()
def lm_loss(model, tokenized: list[Tokenized], pad_id: int, batch_size: int, device, autocast=contextlib.nullcontext) -> dict:
    """Token-weighted mean cross-entropy over labelled tokens, and perplexity = exp(loss)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(tokenized)), key=lambda i: len(tokenized[i].input_ids))  # less padding
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for start in range(0, len(order), batch_size):
        batch = collate([tokenized[i] for i in order[start: start + batch_size]], pad_id, device)
        with autocast():
            loss_sum, n = token_loss_sum(model, batch)
        total += loss_sum.double()
        count += int(n)
    model.train(was_training)
    loss = (total / max(count, 1)).item()
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def normalise_answer(text: str) -> str:
    return text.strip()


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Fraction of predictions equal to their reference after stripping outer whitespace."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        return float("nan")
    hits = sum(normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references))
    return hits / len(references)
