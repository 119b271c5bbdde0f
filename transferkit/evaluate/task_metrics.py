"""Task metric hooks: a score that knows what a right answer means for one task.

A hook takes the generated texts and their references and returns named scores in [0, 1]; the first
is the task's headline metric (what the prompting baseline is compared on). `eval.task_metric` names
a built-in hook (`json`) or a function `package.module:function` of the user's own (imported only
when the config names it).
"""

from __future__ import annotations

import importlib
import json
from typing import Callable

from ..errors import ConfigError

TaskMetric = Callable[[list[str], list[str]], dict[str, float]]


def _json_object(text: str):
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def json_fields(predictions: list[str], references: list[str]) -> dict[str, float]:
    """json_field_accuracy: fraction of the references' (key, value) pairs that the prediction reproduces
    exactly (an unparseable prediction scores 0 on all its fields); json_valid: fraction of predictions that
    parse as a JSON object."""
    fields = hits = valid = 0
    for prediction, reference in zip(predictions, references):
        expected = _json_object(reference)
        if expected is None:
            raise ValueError(f"reference is not a JSON object: {reference[:80]!r}")
        got = _json_object(prediction.strip())
        valid += got is not None
        fields += len(expected)
        hits += sum(1 for k, v in expected.items() if got is not None and k in got and got[k] == v)
    return {"json_field_accuracy": hits / fields if fields else float("nan"),
            "json_valid": valid / len(predictions) if predictions else float("nan")}


BUILT_IN: dict[str, TaskMetric] = {"json": json_fields}


def resolve_task_metric(name: str | None) -> TaskMetric | None:
    if not name:
        return None
    if name in BUILT_IN:
        return BUILT_IN[name]
    module_name, _, function = name.partition(":")
    if not function:
        raise ConfigError(f"config key 'eval.task_metric': unknown metric '{name}'; built in: "
                          f"{', '.join(BUILT_IN)}, or give package.module:function")
    try:
        hook = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"config key 'eval.task_metric': cannot import '{name}' ({exc})") from None
    return hook
