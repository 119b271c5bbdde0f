"""The one number a run is judged by, and the tuned model beside its best baseline on it.

Baselines: the untrained model prompted (zero- and k-shot, `baseline.py`) and, for classification, what knowing
only the training labels scores (`label_baselines`): always answering the most frequent training class
(`majority`), and guessing at random with the training class frequencies q (`class_prior`), whose expected scores
on a split with class shares p are

    accuracy  Σ_c p_c·q_c          F1_c  2·p_c·q_c / (p_c + q_c)  (expected true positives over expected
    loss      −Σ_c p_c·log q_c                                     support and predictions, per example)

The classification headline is macro-F1, for balanced and imbalanced classes alike: on imbalanced data accuracy
rewards a model that answers the frequent class, which the majority baseline then exposes.
"""

from __future__ import annotations

import math
from collections import Counter

from .metrics import accuracy, macro_f1

LOWER_IS_BETTER = {"loss", "perplexity"}
COLLAPSE_MARGIN = 0.2  # flag a class predicted this much more often than it occurs


def label_baselines(train_labels: list[str], scored_labels: list[str], names: list[str]) -> dict[str, dict]:
    """{"majority": metrics, "class_prior": metrics} on the scored labels, from the training labels alone."""
    counts = Counter(train_labels)
    majority = max(names, key=lambda n: (counts[n], -names.index(n)))   # ties: the first name
    golds = [names.index(label) for label in scored_labels]
    always = [names.index(majority)] * len(golds)
    n = len(scored_labels)
    p = {c: scored_labels.count(c) / n for c in names}
    q = {c: counts[c] / len(train_labels) for c in names}
    f1 = [2 * p[c] * q[c] / (p[c] + q[c]) for c in names if p[c] + q[c] > 0]
    prior = {"examples": n, "accuracy": sum(p[c] * q[c] for c in names), "macro_f1": sum(f1) / len(f1),
             "loss": -sum(p[c] * math.log(q[c]) for c in names if p[c] > 0)}
    return {"majority": {"examples": n, "answer": majority, "accuracy": accuracy(always, golds),
                         "macro_f1": macro_f1(always, golds)},
            "class_prior": prior}


def collapse_flag(tuned: dict) -> str | None:
    """A flag when the model answers one class far more often than it occurs (from the confusion matrix)."""
    matrix = tuned.get("confusion_matrix")
    if not matrix or not tuned.get("examples"):
        return None
    names, counts, n = matrix["labels"], matrix["counts"], tuned["examples"]
    predicted = [sum(row[j] for row in counts) / n for j in range(len(names))]
    true = [sum(row) / n for row in counts]
    top = max(range(len(names)), key=predicted.__getitem__)
    if predicted[top] - true[top] < COLLAPSE_MARGIN:
        return None
    return (f"the model answers '{names[top]}' for {predicted[top]:.1%} of examples, which hold {true[top]:.1%} of "
            f"them: it is collapsing toward one class")


SHORT_ANSWER_WORDS = 4   # at the median: answers this short are closed (a name, a number, a label)
HEADLINES = {"classification": {"macro_f1", "accuracy", "loss"}, "lm": {"perplexity", "loss"},
             "instruction": {"exact_match", "token_f1", "perplexity", "loss"},  # + a task metric's scores
             "preference": {"preference_accuracy", "logp_margin"}}


def default_headline(schema: str, references: list[str], generates: bool, task_metric: str | None) -> str | None:
    """`eval.headline` when the config leaves it null, from the data: None means the task metric's headline,
    known once it has scored."""
    if schema == "classification":
        return "macro_f1"
    if schema == "preference":
        return "preference_accuracy"
    if schema != "instruction" or not generates:
        return "perplexity"
    if task_metric is not None:
        return None
    words = sorted(len(r.split()) for r in references)
    return "exact_match" if words and words[len(words) // 2] <= SHORT_ANSWER_WORDS else "token_f1"


def headline_metric(schema: str, tuned: dict, choice: str | None = None) -> str:
    """`choice` (eval.headline) when given and measured; else macro-F1 for classification; for instruction data
    the task metric's headline, else exact match; perplexity when nothing was generated (as in the validations
    that select a checkpoint, which do not generate)."""
    if choice is not None and choice in tuned:
        return choice
    if schema == "classification":
        return "macro_f1"
    if schema == "preference":
        return "preference_accuracy"
    if schema == "instruction":
        if tuned.get("task_metric_headline") in tuned:
            return tuned["task_metric_headline"]
        if "exact_match" in tuned:
            return "exact_match"
    return "perplexity"


def compare(schema: str, tuned: dict, baselines: dict[str, dict], choice: str | None = None) -> dict:
    """Tuned vs the best baseline (prompted, or from the labels alone) on the headline metric. gain > 0 means the tuned model is better
    (for loss and perplexity, gain = baseline − tuned)."""
    metric = headline_metric(schema, tuned, choice)
    lower = metric in LOWER_IS_BETTER
    scored = {name: m[metric] for name, m in baselines.items() if metric in m and not math.isnan(m[metric])}
    beside = perplexity_beside(metric, tuned, baselines)
    if not scored:
        return {"metric": metric, "tuned": tuned.get(metric), "baseline": None, "gain": None, "beats_baseline": None,
                **beside}
    best = (min if lower else max)(scored, key=scored.get)
    gain = (scored[best] - tuned[metric]) if lower else (tuned[metric] - scored[best])
    return {"metric": metric, "higher_is_better": not lower, "tuned": tuned[metric], "baseline": scored[best],
            "baseline_prompt": best, "gain": gain, "beats_baseline": gain > 0, **beside}


def perplexity_beside(metric: str, tuned: dict, baselines: dict[str, dict]) -> dict:
    """{"perplexity": {"tuned", "base"}}: the reference answers' perplexity under the tuned model and under the
    base (the zero-shot prompt scores it), whenever the headline is something else."""
    base = next((m["perplexity"] for m in baselines.values() if "perplexity" in m), None)
    if metric == "perplexity" or base is None or "perplexity" not in tuned:
        return {}
    return {"perplexity": {"tuned": tuned["perplexity"], "base": base}}
