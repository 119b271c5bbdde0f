"""Metrics on tokenized data and on generated text."""

from __future__ import annotations

import contextlib
import math

import torch

from ..data.tokenize import Tokenized


def _batches(tokenized: list[Tokenized], batch_size: int):
    order = sorted(range(len(tokenized)), key=lambda i: len(tokenized[i].input_ids))  # less padding
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        yield idx, [tokenized[i] for i in idx]


@torch.no_grad()
def mean_loss(model, tokenized: list[Tokenized], pad_id: int, batch_size: int, device, autocast=contextlib.nullcontext,
              objective=None) -> dict:
    """Unit-weighted mean loss (per labelled token for causal LM, per example for classification).
    For causal LM also perplexity = exp(loss)."""
    from ..train.objectives import OBJECTIVES

    objective = objective or OBJECTIVES["causal-lm"]
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for _, items in _batches(tokenized, batch_size):
        batch = objective.collate(items, pad_id, device)
        with autocast():
            loss_sum, n = objective.loss_sum(model, batch)
        total += loss_sum.double()
        count += int(n)
    model.train(was_training)
    loss = (total / max(count, 1)).item()
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}



@torch.no_grad()
def predict_classes(model, tokenized: list[Tokenized], pad_id: int, batch_size: int, device,
                    autocast=contextlib.nullcontext) -> tuple[list[int], list[list[float]]]:
    """Arg-max class and class log-probabilities (fp32 log-softmax) for each example, in input order."""
    from ..train.objectives import collate_classes

    was_training = model.training
    model.eval()
    predictions: list[int] = [0] * len(tokenized)
    log_probs: list[list[float]] = [[]] * len(tokenized)
    for idx, items in _batches(tokenized, batch_size):
        batch = collate_classes(items, pad_id, device)
        with autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        batch_log_probs = logits.log_softmax(-1).cpu()
        for row, i in enumerate(idx):
            predictions[i] = int(batch_log_probs[row].argmax())
            log_probs[i] = batch_log_probs[row].tolist()
    model.train(was_training)
    return predictions, log_probs


def accuracy(predictions: list[int], golds: list[int]) -> float:
    return sum(p == g for p, g in zip(predictions, golds)) / len(golds) if golds else float("nan")


def macro_f1(predictions: list[int], golds: list[int]) -> float:
    """Unweighted mean over classes (those in gold or predicted) of F1 = 2PR / (P + R)."""
    classes = sorted(set(golds) | set(predictions))
    scores = []
    for c in classes:
        tp = sum(p == c and g == c for p, g in zip(predictions, golds))
        fp = sum(p == c and g != c for p, g in zip(predictions, golds))
        fn = sum(p != c and g == c for p, g in zip(predictions, golds))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else float("nan")


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
