"""The one number a run is judged by, and the tuned model beside its best prompting baseline on it."""

from __future__ import annotations

import math

LOWER_IS_BETTER = {"loss", "perplexity"}


def headline_metric(schema: str, tuned: dict) -> str:
    """Accuracy for classification; for instruction data the task metric's headline, else exact match;
    perplexity when nothing was generated."""
    if schema == "classification":
        return "accuracy"
    if schema == "instruction":
        if tuned.get("task_metric_headline") in tuned:
            return tuned["task_metric_headline"]
        if "exact_match" in tuned:
            return "exact_match"
    return "perplexity"


def compare(schema: str, tuned: dict, baselines: dict[str, dict]) -> dict:
    """Tuned vs the best prompting baseline on the headline metric. gain > 0 means the tuned model is better
    (for loss and perplexity, gain = baseline − tuned)."""
    metric = headline_metric(schema, tuned)
    lower = metric in LOWER_IS_BETTER
    scored = {name: m[metric] for name, m in baselines.items() if metric in m and not math.isnan(m[metric])}
    if not scored:
        return {"metric": metric, "tuned": tuned.get(metric), "baseline": None, "gain": None, "beats_baseline": None}
    best = (min if lower else max)(scored, key=scored.get)
    gain = (scored[best] - tuned[metric]) if lower else (tuned[metric] - scored[best])
    return {"metric": metric, "higher_is_better": not lower, "tuned": tuned[metric], "baseline": scored[best],
            "baseline_prompt": best, "gain": gain, "beats_baseline": gain > 0}
