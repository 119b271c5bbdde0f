"""Metrics on tokenized data and on generated text."""

from __future__ import annotations

import math
from collections import Counter

import torch
from tqdm.auto import tqdm

from ..data.batching import collate
from ..data.tokenize import Tokenized
from ..objectives import collate_classes, pair_rows
from ..objectives.loss import token_loss_per_row
from ..objectives.preference import PairLogProbs, preference_loss
from ..options import PreferenceConfig
from ..runtime import Runtime, for_inference


MAX_BATCH_TOKENS = 2048  # padded tokens per forward pass (4096: 7 % slower, 8192: 42 % on 2 CPU cores)


def _batches(tokenized: list[Tokenized], batch_size: int):
    """(indices, items) batches in order of length: at most `batch_size` rows and, past one row, at most
    MAX_BATCH_TOKENS padded tokens, so that long sequences do not drag short ones into their padding (on 20k
    tokens of Austen's paragraphs, 27 to 450 tokens long, batches of 25 were 30 % padding)."""
    order = sorted(range(len(tokenized)), key=lambda i: len(tokenized[i].input_ids))
    batch: list[int] = []
    for i in order:
        width = len(tokenized[i].input_ids)  # the longest so far: the order is ascending
        if batch and (len(batch) == batch_size or (len(batch) + 1) * width > MAX_BATCH_TOKENS):
            yield batch, [tokenized[j] for j in batch]
            batch = []
        batch.append(i)
    if batch:
        yield batch, [tokenized[j] for j in batch]


def mean_loss(model, tokenized: list[Tokenized], pad_id: int, batch_size: int, runtime: Runtime,
              desc: str | None = None) -> dict:
    """Causal LM: mean loss per labelled token, perplexity = exp(loss), and the token count."""
    return loss_metrics(per_example_token_losses(model, tokenized, pad_id, batch_size, runtime, desc))


@torch.no_grad()
def per_example_token_losses(model, tokenized: list[Tokenized], pad_id: int, batch_size: int,
                             runtime: Runtime, desc: str | None = None) -> list[tuple[float, int]]:
    """(cross-entropy sum, labelled tokens) of each causal-LM example, in input order; `desc` names a progress
    bar."""
    result: list[tuple[float, int]] = [(0.0, 0)] * len(tokenized)
    batches = tqdm(list(_batches(tokenized, batch_size)), desc=desc, unit="batch", leave=False, disable=desc is None)
    with for_inference(model):
        for idx, items in batches:
            with runtime.autocast():
                sums, counts = token_loss_per_row(model, collate(items, pad_id, runtime.device))
            for i, loss_sum, count in zip(idx, sums.tolist(), counts.tolist()):
                result[i] = (loss_sum, count)
    return result


def loss_metrics(losses: list[tuple[float, int]]) -> dict:
    """Token-weighted mean loss and perplexity = exp(loss) from per-example (loss sum, tokens)."""
    count = sum(n for _, n in losses)
    loss = math.fsum(s for s, _ in losses) / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def pair_log_probs(model, tokenized: list[Tokenized], pad_id: int, batch_size: int, runtime: Runtime,
                   desc: str | None = None) -> PairLogProbs:
    """Preference pairs: each answer's summed log-probability and token count under `model`, each [pairs]."""
    n = len(tokenized)
    scored = torch.tensor(per_example_token_losses(model, pair_rows(tokenized), pad_id, batch_size, runtime, desc),
                          dtype=torch.float64)                                    # [2n, (loss sum, tokens)]
    return PairLogProbs(-scored[:n, 0], -scored[n:, 0], scored[:n, 1], scored[n:, 1])


def preference_metrics(policy: PairLogProbs, reference: PairLogProbs | None, cfg: PreferenceConfig) -> dict:
    """Held-out preference figures, means over pairs:

        preference_accuracy   share of pairs whose chosen answer has the higher log-probability: the answer the
                              model would pick; the headline, measured alike for the base and the tuned model
        chosen_logp, rejected_logp, logp_margin    summed answer log-probabilities and their difference
        loss, reward_accuracy, reward_margin, chosen_reward, rejected_reward    (with a reference) the training
                              loss and TRL's implicit rewards β (π − ρ): the share of pairs whose chosen reward is
                              the higher one is what DPO optimises, not what the model would answer
    """
    metrics = {"examples": len(policy.chosen),
               "preference_accuracy": (policy.chosen > policy.rejected).double().mean().item(),
               "chosen_logp": policy.chosen.mean().item(), "rejected_logp": policy.rejected.mean().item(),
               "logp_margin": (policy.chosen - policy.rejected).mean().item()}
    if reference is not None:
        out = preference_loss(policy, reference, loss=cfg.loss, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                              sft_weight=cfg.sft_weight)
        figures = out.metrics()
        metrics.update(loss=figures["loss"], reward_accuracy=figures["reward_accuracy"],
                       reward_margin=figures["reward_margin"], chosen_reward=figures["chosen_reward"],
                       rejected_reward=figures["rejected_reward"])
    return metrics


@torch.no_grad()
def class_log_probs(model, tokenized: list[Tokenized], pad_id: int, batch_size: int,
                    runtime: Runtime) -> list[list[float]]:
    """Class log-probabilities (fp32 log-softmax) of each example, in input order."""
    log_probs: list[list[float]] = [[]] * len(tokenized)
    with for_inference(model):
        for idx, items in _batches(tokenized, batch_size):
            batch = collate_classes(items, pad_id, runtime.device)
            with runtime.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            batch_log_probs = logits.log_softmax(-1).cpu()
            for row, i in enumerate(idx):
                log_probs[i] = batch_log_probs[row].tolist()
    return log_probs


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


def calibration_bins(confidences: list[float], correct: list[bool], bins: int = 10) -> list[dict]:
    """Equal-width confidence bins (0, 1/bins], ..., ((bins−1)/bins, 1]: each with its range, example count,
    accuracy and mean confidence (None when empty). What a reliability diagram draws."""
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, conf in enumerate(confidences):
        members[min(bins - 1, max(0, math.ceil(conf * bins) - 1))].append(i)
    return [{"low": b / bins, "high": (b + 1) / bins, "count": len(idx),
             "accuracy": sum(correct[i] for i in idx) / len(idx) if idx else None,
             "confidence": sum(confidences[i] for i in idx) / len(idx) if idx else None}
            for b, idx in enumerate(members)]


def expected_calibration_error(confidences: list[float], correct: list[bool], bins: int = 10) -> float:
    """ECE (Guo et al. 2017, arXiv:1706.04599, eq. 3): Σ_b |B_b|/n · |accuracy(B_b) − confidence(B_b)|
    over `bins` equal-width confidence bins (see `calibration_bins`)."""
    if not confidences:
        return float("nan")
    return sum(b["count"] / len(confidences) * abs(b["accuracy"] - b["confidence"])
               for b in calibration_bins(confidences, correct, bins) if b["count"])


def classification_metrics(log_probs: list[list[float]], golds: list[int], names: list[str]) -> dict:
    """Loss (mean −log p(gold)), accuracy, macro-F1, ECE of the predicted class's probability, per-class
    precision/recall/F1, confusion matrix and calibration bins, from class log-probabilities [N][classes]."""
    predicted = [max(range(len(lp)), key=lp.__getitem__) for lp in log_probs]
    confidences = [math.exp(lp[p]) for lp, p in zip(log_probs, predicted)]  # probability of the predicted class
    correct = [p == g for p, g in zip(predicted, golds)]
    return {"loss": -math.fsum(lp[g] for lp, g in zip(log_probs, golds)) / max(len(golds), 1),
            "examples": len(golds), "accuracy": accuracy(predicted, golds), "macro_f1": macro_f1(predicted, golds),
            "ece": expected_calibration_error(confidences, correct),
            "per_class": per_class(predicted, golds, names),
            "confusion_matrix": {"labels": names, "counts": confusion_matrix(predicted, golds, len(names))},
            "calibration": calibration_bins(confidences, correct)}


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
