"""Evaluate a model on one data split.

- instruction: loss, perplexity, exact match and token-level F1 of greedy generations against the references,
  plus the configured task metric (`eval.task_metric`);
- lm: loss and perplexity;
- classification: loss, accuracy, macro-F1, per-class precision/recall/F1, the confusion matrix, the
  expected calibration error of the predicted class's probability and its calibration bins;
- preference: preference accuracy (the chosen answer more likely than the rejected), the answers' log-probabilities
  and, where the pairs carry the reference's, the preference loss and implicit rewards (`metrics.preference_metrics`).

The model runs once per example; metrics are aggregated from per-example records, so the same
functions give the whole split and every slice (`data.slice_column`) of it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..data import Split
from ..data.schema import Example, prompt_and_reference
from ..objectives.preference import PairLogProbs
from ..options import EvalConfig, PreferenceConfig
from ..runtime import Runtime
from .generation import generate_completions
from .metrics import (class_log_probs, classification_metrics, exact_match, loss_metrics, normalise_answer,
                      pair_log_probs, per_example_token_losses, preference_metrics, token_f1)
from .task_metrics import TaskMetric, resolve_task_metric

UNSLICED = "(no slice)"


def generation_metrics(outputs: list[str], references: list[str], task_metric: TaskMetric | None) -> dict:
    """Exact match, mean token F1 and the task metric's scores of generated answers."""
    metrics = {"exact_match": exact_match(outputs, references),
               "token_f1": sum(token_f1(o, r) for o, r in zip(outputs, references)) / max(len(references), 1)}
    if task_metric is not None:
        scores = task_metric(outputs, references)
        metrics.update(scores)
        metrics["task_metric_headline"] = next(iter(scores))  # the hook's first score is its headline
    return metrics


def slice_indices(examples: list[Example]) -> dict[str, list[int]]:
    """{slice name: example indices}; empty when no example names a slice."""
    if all(ex.slice is None for ex in examples):
        return {}
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.slice if ex.slice is not None else UNSLICED, []).append(i)
    return dict(sorted(groups.items()))


def with_slices(examples: list[Example], score: Callable[[list[int]], dict]) -> dict:
    """score(all indices), plus score(indices of each slice) under "slices" when the data has slices."""
    metrics = score(list(range(len(examples))))
    groups = slice_indices(examples)
    if groups:
        metrics["slices"] = {name: score(idx) for name, idx in groups.items()}
    return metrics


def class_results(examples: list[Example], log_probs: list[list[float]], names: list[str]) -> tuple[dict, list[dict]]:
    """(metrics, per-example predictions) of class log-probabilities [examples][classes]."""
    golds = [names.index(ex.label) for ex in examples]
    metrics = with_slices(examples, lambda idx: classification_metrics(
        [log_probs[i] for i in idx], [golds[i] for i in idx], names))
    predicted = [max(range(len(lp)), key=lp.__getitem__) for lp in log_probs]
    predictions = [{"where": ex.where, "label": ex.label, "prediction": names[p], "confidence": math.exp(lp[p]),
                    "match": names[p] == ex.label, **({"slice": ex.slice} if ex.slice is not None else {})}
                   for ex, p, lp in zip(examples, predicted, log_probs)]
    return metrics, predictions


def answer_predictions(examples: list[Example], references: list[str], outputs: list[str]) -> list[dict]:
    """Per-example records of generated answers beside their references."""
    return [{"where": ex.where, "prompt": ex.messages[-2]["content"], "reference": r, "prediction": o,
             "match": normalise_answer(o) == normalise_answer(r), **({"slice": ex.slice} if ex.slice is not None else {})}
            for ex, r, o in zip(examples, references, outputs)]


def pair_results(examples: list[Example], tokenized, policy: PairLogProbs, cfg: PreferenceConfig
                 ) -> tuple[dict, list[dict]]:
    """(metrics, per-pair records) of preference pairs; the reward figures where every pair carries its
    reference log-probabilities."""
    known = all(t.reference is not None for t in tokenized)
    reference = None
    if known:
        ref = torch.tensor([t.reference for t in tokenized], dtype=torch.float64)              # [pairs, 2]
        reference = PairLogProbs(ref[:, 0], ref[:, 1], policy.chosen_tokens, policy.rejected_tokens)

    def score(idx: list[int]) -> dict:
        pick = torch.tensor(idx, dtype=torch.long)
        return preference_metrics(policy.take(pick), reference.take(pick) if known else None, cfg)

    # "reference" is the chosen answer, "prediction" the answer the model finds the more likely
    records = [{"where": ex.where, "prompt": ex.messages[-1]["content"], "reference": ex.chosen,
                "prediction": ex.chosen if c > r else ex.rejected, "chosen_logp": c, "rejected_logp": r,
                "match": c > r, **({"slice": ex.slice} if ex.slice is not None else {})}
               for ex, c, r in zip(examples, policy.chosen.tolist(), policy.rejected.tolist())]
    return with_slices(examples, score), records


def evaluate_split(model, tokenizer, split: Split, schema: str, eval_cfg: EvalConfig, runtime: Runtime, *,
                   label: str = "eval", labels: list[str] | None = None,
                   preference: PreferenceConfig | None = None) -> tuple[dict, list[dict]]:
    """(metrics, per-example predictions). `label` names the progress bar; `labels`: the class names;
    `preference`: the preference loss's settings (preference data)."""
    examples, tokenized = split.examples, split.tokenized
    if eval_cfg.max_examples is not None:
        examples, tokenized = examples[: eval_cfg.max_examples], tokenized[: eval_cfg.max_examples]
    if schema == "preference":
        policy = pair_log_probs(model, tokenized, tokenizer.pad_token_id, eval_cfg.batch_size, runtime)
        return pair_results(examples, tokenized, policy, preference or PreferenceConfig())
    if schema == "classification":
        # One forward pass gives the loss (cross-entropy = −log p(gold)) and the predictions.
        log_probs = class_log_probs(model, tokenized, tokenizer.pad_token_id, eval_cfg.batch_size, runtime)
        return class_results(examples, log_probs, labels)

    losses = per_example_token_losses(model, tokenized, tokenizer.pad_token_id, eval_cfg.batch_size, runtime)
    outputs: list[str] | None = None
    references: list[str] = []
    if schema == "instruction" and eval_cfg.exact_match:
        prompts, references = map(list, zip(*(prompt_and_reference(ex) for ex in examples)))
        outputs = generate_completions(model, tokenizer, prompts, max_new_tokens=eval_cfg.max_new_tokens,
                                       batch_size=eval_cfg.batch_size, runtime=runtime, desc=f"{label}: generating")
    task_metric = resolve_task_metric(eval_cfg.task_metric) if outputs is not None else None

    def score(idx: list[int]) -> dict:
        metrics = {**loss_metrics([losses[i] for i in idx]), "examples": len(idx)}
        if outputs is not None:
            metrics.update(generation_metrics([outputs[i] for i in idx], [references[i] for i in idx], task_metric))
        return metrics

    return with_slices(examples, score), [] if outputs is None else answer_predictions(examples, references, outputs)


def format_metrics(metrics: dict) -> str:
    """One console line: loss, perplexity, exact match, the task metric's headline, accuracy, macro-F1."""
    parts = [f"loss {metrics['loss']:.4f}"] if "loss" in metrics else []
    headline = metrics.get("task_metric_headline")
    for key, label in (("perplexity", "ppl"), ("exact_match", "exact match"), (headline, headline),
                       ("accuracy", "accuracy"), ("macro_f1", "macro-F1"),
                       ("preference_accuracy", "preference accuracy"), ("reward_accuracy", "reward accuracy")):
        if key in metrics:
            parts.append(f"{label} {metrics[key]:.2f}" if key == "perplexity" else f"{label} {100 * metrics[key]:.1f}%")
    return ", ".join(parts) + f" ({metrics['examples']} examples)"
