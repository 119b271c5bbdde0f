"""Metrics on tokenized data and on generated text."""

from __future__ import annotations

import contextlib
import math
from collections import Counter

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


def confusion_matrix(predictions: list[int], golds: list[int], num_classes: int) -> list[list[int]]:
    """counts[gold][predicted]."""
    counts = [[0] * num_classes for _ in range(num_classes)]
    for p, g in zip(predictions, golds):
        counts[g][p] += 1
    return counts


def per_class(predictions: list[int], golds: list[int], names: list[str]) -> dict[str, dict]:
    """Precision TP/(TP+FP), recall TP/(TP+FN), F1 = 2TP/(2TP+FP+FN) and support per class
    (0 where a denominator is 0, as scikit-learn's zero_division=0)."""
    counts = confusion_matrix(predictions, golds, len(names))
    result = {}
    for c, name in enumerate(names):
        tp = counts[c][c]
        predicted = sum(row[c] for row in counts)
        support = sum(counts[c])
        result[name] = {"precision": tp / predicted if predicted else 0.0, "recall": tp / support if support else 0.0,
                        "f1": 2 * tp / (predicted + support) if tp else 0.0, "support": support}
    return result


def macro_f1(predictions: list[int], golds: list[int]) -> float:
    """Unweighted mean over classes (those in gold or predicted) of F1 = 2PR / (P + R)."""
    classes = sorted(set(golds) | set(predictions))
    if not classes:
        return float("nan")
    scores = per_class(predictions, golds, [str(c) for c in range(max(classes) + 1)])
    return sum(scores[str(c)]["f1"] for c in classes) / len(classes)


def expected_calibration_error(confidences: list[float], correct: list[bool], bins: int = 10) -> float:
    """ECE (Guo et al. 2017, arXiv:1706.04599, eq. 3): Σ_b |B_b|/n · |accuracy(B_b) − confidence(B_b)|
    over `bins` equal-width confidence bins (0, 1/bins], ..., ((bins−1)/bins, 1]."""
    if not confidences:
        return float("nan")
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, conf in enumerate(confidences):
        members[min(bins - 1, max(0, math.ceil(conf * bins) - 1))].append(i)
    total = 0.0
    for idx in members:
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidences[i] for i in idx) / len(idx)
            total += len(idx) / len(confidences) * abs(acc - conf)
    return total


def normalise_answer(text: str) -> str:
    return text.strip()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over whitespace tokens (Rajpurkar et al. 2016): overlap counted as a multiset."""
    pred, ref = prediction.split(), reference.split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Fraction of predictions equal to their reference after stripping outer whitespace."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        return float("nan")
    hits = sum(normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references))
    return hits / len(references)
