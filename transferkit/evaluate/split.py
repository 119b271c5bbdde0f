"""Evaluate a model on one data split.

- instruction: loss, perplexity, exact match and token-level F1 of greedy generations against the references;
- lm: loss and perplexity;
- classification: loss, accuracy, macro-F1, per-class precision/recall/F1, the confusion matrix and the
  expected calibration error of the predicted class's probability.
"""

from __future__ import annotations

import contextlib
import math

from tqdm.auto import tqdm

from ..data import Split
from ..data.schema import prompt_and_reference
from .generation import generate_completions
from .metrics import (accuracy, confusion_matrix, exact_match, expected_calibration_error, macro_f1, mean_loss,
                      per_class, predict_classes, token_f1)


def evaluate_split(model, tokenizer, split: Split, schema: str, eval_cfg, device, *,
                   autocast=contextlib.nullcontext, label: str = "eval", labels: list[str] | None = None
                   ) -> tuple[dict, list[dict]]:
    """(metrics, per-example predictions)."""
    from ..train.objectives import OBJECTIVES

    examples, tokenized = split.examples, split.tokenized
    if eval_cfg.max_examples is not None:
        examples, tokenized = examples[: eval_cfg.max_examples], tokenized[: eval_cfg.max_examples]
    if schema == "classification":
        # One forward pass gives the loss (cross-entropy = −log p(gold)) and the predictions.
        predicted, log_probs = predict_classes(model, tokenized, tokenizer.pad_token_id, eval_cfg.batch_size,
                                               device, autocast)
        golds = [t.labels[0] for t in tokenized]
        metrics = {"loss": -math.fsum(lp[g] for lp, g in zip(log_probs, golds)) / len(golds),
                   "examples": len(examples), "accuracy": accuracy(predicted, golds), "macro_f1": macro_f1(predicted, golds)}
        names = labels or [str(i) for i in range(len(log_probs[0]))]
        confidences = [math.exp(max(lp)) for lp in log_probs]  # probability of the predicted class
        metrics["ece"] = expected_calibration_error(confidences, [p == g for p, g in zip(predicted, golds)])
        metrics["per_class"] = per_class(predicted, golds, names)
        metrics["confusion_matrix"] = {"labels": names, "counts": confusion_matrix(predicted, golds, len(names))}
        predictions = [{"where": ex.where, "label": ex.label, "prediction": names[p], "confidence": confidence,
                        "match": names[p] == ex.label} for ex, p, confidence in zip(examples, predicted, confidences)]
        return metrics, predictions
    metrics = mean_loss(model, tokenized, tokenizer.pad_token_id, eval_cfg.batch_size, device, autocast,
                        OBJECTIVES["causal-lm"])
    metrics["examples"] = len(examples)
    predictions: list[dict] = []
    if schema == "instruction" and eval_cfg.exact_match:
        prompts, references = zip(*(prompt_and_reference(ex) for ex in examples))
        with tqdm(total=len(prompts), desc=f"{label}: generating", unit="ex", leave=False) as bar:
            outputs = generate_completions(model, tokenizer, list(prompts), max_new_tokens=eval_cfg.max_new_tokens,
                                           batch_size=eval_cfg.batch_size, device=device, autocast=autocast,
                                           progress=bar.update)
        metrics["exact_match"] = exact_match(outputs, list(references))
        metrics["token_f1"] = sum(token_f1(o, r) for o, r in zip(outputs, references)) / len(references)
        predictions = [
            {"where": ex.where, "prompt": p[-1]["content"], "reference": r, "prediction": o,
             "match": o.strip() == r.strip()}
            for ex, p, r, o in zip(examples, prompts, references, outputs)
        ]
    return metrics, predictions
