"""Task schemas: detect them from the columns, validate every row, normalise.

| schema         | columns                                                        |
|----------------|----------------------------------------------------------------|
| instruction    | `prompt, completion` or `messages` or `instruction[, input], output` |
| lm             | `text` (or a .txt file)                                        |
| classification | `text[, text_pair], label`                                     |
| preference     | `prompt, chosen, rejected` (prompt as text or chat turns)       |

Instruction rows become a list of chat messages; the assistant turns are what
the model learns. A bad row raises `DataError` with file, line and field.
Preference rows: `prompt` a string or chat messages ending in a user turn, `chosen` and `rejected` each a string or
one assistant turn; both sides non-empty and different. They train the preference objectives
(`objectives/preference.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import DataError
from .readers import Row

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    source: str
    line: int
    messages: tuple[dict[str, str], ...] = ()  # instruction: chat turns
    text: str = ""                             # lm, classification: raw text
    text_pair: str | None = None               # classification: optional second text
    label: str | None = None                   # classification: class name (ints and bools as strings)
    chosen: str | None = None                  # preference: the preferred answer to `messages` (the prompt)
    rejected: str | None = None                # preference: the dispreferred one
    slice: str | None = None                   # held-out slice (domain, source, ...) metrics are also split by

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def detect_schema(columns: set[str]) -> str | None:
    if "messages" in columns:
        return "instruction"
    if {"prompt", "chosen", "rejected"} <= columns:
        return "preference"
    if {"prompt", "completion"} <= columns or {"instruction", "output"} <= columns:
        return "instruction"
    if "text" in columns and "label" in columns:
        return "classification"
    if "text" in columns:
        return "lm"
    return None


def schema_of(rows: list[Row], configured: str = "auto") -> str:
    """The schema named in the config, or the one the first row's columns imply."""
    if configured != "auto":
        return configured
    first = rows[0]
    schema = detect_schema(set(first.fields))
    if schema is None:
        raise DataError(
            first.source,
            f"cannot detect the task schema from columns {sorted(first.fields)}; expected prompt/completion, "
            f"messages, instruction/input/output, text, text/label or prompt/chosen/rejected "
            f"(or set data.schema)", first.line)
    return schema


def _string_field(row: Row, name: str, *, allow_empty: bool = False) -> str:
    if name not in row.fields:
        raise DataError(row.source, f"missing required field (row has {sorted(row.fields)})", row.line, name)
    value = row.fields[name]
    if value is None:
        raise DataError(row.source, "is null", row.line, name)
    if not isinstance(value, str):
        raise DataError(row.source, f"must be a string, got {type(value).__name__}", row.line, name)
    if not allow_empty and not value.strip():
        raise DataError(row.source, "is empty", row.line, name)
    return value


def _messages(row: Row, allow_unanswered: bool = False, column: str = "messages") -> tuple[dict[str, str], ...]:
    """The chat turns of a row; the last must be the assistant's (the target) unless `allow_unanswered`."""
    raw = row.fields.get(column)
    if raw is None:
        raise DataError(row.source, "missing or null", row.line, column)
    if not isinstance(raw, list) or not raw:
        raise DataError(row.source, "must be a non-empty list of {role, content} objects", row.line, column)
    messages = []
    for i, message in enumerate(raw):
        field = f"{column}[{i}]"
        if not isinstance(message, dict):
            raise DataError(row.source, "must be an object with role and content", row.line, field)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(row.source, f"unknown role {role!r}; expected one of {list(ROLES)}", row.line, field + ".role")
        if not isinstance(content, str):
            raise DataError(row.source, f"content must be a string, got {type(content).__name__}", row.line, field + ".content")
        if role == "system" and i != 0:
            raise DataError(row.source, "a system message may only come first", row.line, field + ".role")
        previous = messages[-1]["role"] if messages else None
        if role in ("user", "assistant") and previous == role:
            raise DataError(row.source, f"two '{role}' messages in a row; turns must alternate", row.line, field + ".role")
        if role == "assistant" and previous not in ("user",):
            raise DataError(row.source, "an assistant message must follow a user message", row.line, field + ".role")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] == "system" or (messages[-1]["role"] != "assistant" and not allow_unanswered):
        raise DataError(row.source, "the last message must be from the assistant (the target to learn)", row.line,
                        column)
    return tuple(messages)


def _preference(row: Row) -> Example:
    """A preference row: the prompt as chat turns ending in the user's, and its two answers."""
    if isinstance(row.fields.get("prompt"), list):
        prompt = _messages(row, allow_unanswered=True, column="prompt")
        if prompt[-1]["role"] != "user":
            raise DataError(row.source, "the prompt's last message must be the user's (the answers reply to it)",
                            row.line, "prompt")
    else:
        prompt = ({"role": "user", "content": _string_field(row, "prompt")},)
    chosen, rejected = _answer(row, "chosen"), _answer(row, "rejected")
    if chosen == rejected:
        raise DataError(row.source, "is the same answer as chosen: nothing to prefer", row.line, "rejected")
    return Example(row.source, row.line, messages=prompt, chosen=chosen, rejected=rejected)


def _answer(row: Row, column: str) -> str:
    """One side of a pair: a string, or one assistant turn ({role, content}, alone or in a one-element list)."""
    value = row.fields.get(column)
    if isinstance(value, list):
        if len(value) != 1:
            raise DataError(row.source, f"must be one assistant turn, got {len(value)} messages", row.line, column)
        value = value[0]
    if isinstance(value, dict):
        if value.get("role") != "assistant":
            raise DataError(row.source, f"must be an assistant turn, got role {value.get('role')!r}", row.line,
                            column + ".role")
        value = value.get("content")
        if not isinstance(value, str) or not value.strip():
            raise DataError(row.source, "must be a non-empty string", row.line, column + ".content")
        return value
    return _string_field(row, column)


def to_example(row: Row, schema: str, slice_column: str = "slice") -> Example:
    example = _to_example(row, schema)
    value = row.fields.get(slice_column)
    if value is None:
        return example
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(row.source, f"a slice must be a name or integer, got {type(value).__name__} {value!r}",
                        row.line, slice_column)
    return dataclasses.replace(example, slice=str(value))


def _to_example(row: Row, schema: str) -> Example:
    if schema == "instruction":
        if "messages" in row.fields:
            return Example(row.source, row.line, messages=_messages(row))
        if "instruction" in row.fields:
            instruction = _string_field(row, "instruction")
            extra = _string_field(row, "input", allow_empty=True) if "input" in row.fields and row.fields["input"] is not None else ""
            prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
            completion = _string_field(row, "output")
        else:
            prompt, completion = _string_field(row, "prompt"), _string_field(row, "completion")
        return Example(row.source, row.line, messages=({"role": "user", "content": prompt},
                                                       {"role": "assistant", "content": completion}))
    if schema == "lm":
        return Example(row.source, row.line, text=_string_field(row, "text"))
    if schema == "classification":
        pair = _string_field(row, "text_pair") if row.fields.get("text_pair") is not None else None
        return Example(row.source, row.line, text=_string_field(row, "text"), text_pair=pair, label=_label(row))
    if schema == "preference":
        return _preference(row)
    raise ValueError(f"unknown schema {schema!r}")


def _label(row: Row) -> str:
    if "label" not in row.fields:
        raise DataError(row.source, f"missing required field (row has {sorted(row.fields)})", row.line, "label")
    value = row.fields["label"]
    if value is None:
        raise DataError(row.source, "is null", row.line, "label")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise DataError(row.source, f"must be a class name or integer, got {type(value).__name__} {value!r}",
                        row.line, "label")
    return str(value)


def label_vocabulary(examples: list[Example], source: str) -> list[str]:
    """Sorted class names of the training data (numerically when all are integers)."""
    names = {ex.label for ex in examples}
    if len(names) < 2:
        raise DataError(source, f"classification needs at least two classes; the training data has only {sorted(names)}")
    numeric = all(n.lstrip("-").isdigit() for n in names)
    return sorted(names, key=int) if numeric else sorted(names)


def check_known_labels(examples: list[Example], labels: list[str]) -> None:
    known = set(labels)
    for ex in examples:
        if ex.label not in known:
            raise DataError(ex.source, f"label {ex.label!r} does not occur in the training data (classes: {labels})",
                            ex.line, "label")


def to_input(row: Row, task: str) -> Example:
    """An unlabelled row as the input a trained model reads (`transferkit predict`): classification `text[,
    text_pair]` (a `label` column, if any, is ignored); instruction `prompt`, `instruction[, input]` or `messages`
    ending in a user turn (a final assistant turn, if any, is dropped)."""
    if task == "classification":
        pair = _string_field(row, "text_pair") if row.fields.get("text_pair") is not None else None
        return Example(row.source, row.line, text=_string_field(row, "text"), text_pair=pair)
    if "messages" in row.fields:
        messages = _messages(row, allow_unanswered=True)
        return Example(row.source, row.line, messages=messages[:-1] if messages[-1]["role"] == "assistant" else messages)
    if "instruction" in row.fields:
        extra = row.fields.get("input") or ""
        instruction = _string_field(row, "instruction")
        prompt = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
    else:
        prompt = _string_field(row, "prompt")
    return Example(row.source, row.line, messages=({"role": "user", "content": prompt},))


def to_examples(rows: list[Row], schema: str, slice_column: str = "slice") -> list[Example]:
    return [to_example(row, schema, slice_column) for row in rows]


def prompt_and_reference(example: Example) -> tuple[list[dict[str, str]], str]:
    """Split an instruction example into (messages before the last assistant turn, its content); a preference
    example into (its prompt turns, the chosen answer)."""
    messages = list(example.messages)
    if example.chosen is not None:
        return messages, example.chosen
    return messages[:-1], messages[-1]["content"]

