"""Data splits: read a data source into examples, split off validation, tokenize every split.

`load_splits(data_cfg, tokenizer, seed)` is the one entry point training uses; `read_examples(path, schema)`
serves `eval`, the general text and the baselines' shots.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import DataError
from ..options import DataConfig
from .overlap import overlap_warnings, refuse_overlap, split_overlap
from .readers import read_rows
from .schema import Example, check_known_labels, label_vocabulary, schema_of, to_examples
from .tokenize import Tokenized, check_has_labels, tokenize_examples

# The model task each data schema trains.
TASK_OF_SCHEMA = {"instruction": "causal-lm", "lm": "causal-lm", "classification": "classification",
                  "preference": "causal-lm"}


@dataclass
class Split:
    name: str
    examples: list[Example]
    tokenized: list[Tokenized]

    @property
    def num_truncated(self) -> int:
        return sum(t.truncated for t in self.tokenized)

    @cached_property
    def repeats(self) -> list[tuple[Example, Example]]:
        """(repeat, first occurrence) pairs; computed once, for the warning and the summary."""
        return duplicate_examples(self.examples)

    def facts(self) -> dict:
        return {"examples": len(self.examples), "sequences": len(self.tokenized),
                "duplicates": len(self.repeats), "truncated": self.num_truncated}


def duplicate_examples(examples: list[Example]) -> list[tuple[Example, Example]]:
    """(repeat, first occurrence) for every example whose content appeared before."""
    first: dict[str, Example] = {}
    repeats = []
    for ex in examples:
        key = json.dumps([ex.messages, ex.text, ex.text_pair, ex.label, ex.chosen, ex.rejected])
        if key in first:
            repeats.append((ex, first[key]))
        else:
            first[key] = ex
    return repeats


@dataclass
class Splits:
    schema: str
    train: Split
    validation: Split | None
    test: Split | None
    notes: list[str] = field(default_factory=list)  # human-readable facts worth printing
    labels: list[str] | None = None                 # classification: class names, index = class id
    overlap: dict[str, dict] = field(default_factory=dict)  # examples shared by two splits (`overlap.py`)

    def facts(self) -> dict:
        """summary.json's "data": each split's facts and the overlap between splits."""
        splits = (self.train, self.validation, self.test)
        return {**{split.name: split.facts() for split in splits if split is not None}, "overlap": self.overlap}


def read_examples(path: str, schema: str = "auto", split: str | None = None,
                  slice_column: str = "slice") -> tuple[str, list[Example]]:
    try:
        rows = read_rows(path, split)
    except DataError as exc:  # a row that cannot be read: an earlier row's problem is reported first
        before = getattr(exc, "rows_before", None)
        if before:
            to_examples(before, schema_of(before, schema), slice_column)
        raise
    detected = schema_of(rows, schema)
    return detected, to_examples(rows, detected, slice_column)


def _tokenize_split(name: str, examples: list[Example], tokenizer, schema: str, data_cfg: DataConfig,
                    labels: list[str] | None = None) -> Split:
    if labels is not None:
        check_known_labels(examples, labels)
    tokenized = tokenize_examples(tokenizer, examples, schema, data_cfg.max_length, data_cfg.overlong, labels)
    return Split(name, examples, tokenized)


def read_train(data_cfg: DataConfig) -> tuple[str, list[Example]]:
    """(schema, examples) of the training file: read once, before any model is loaded."""
    return read_examples(data_cfg.train, data_cfg.schema, "train", data_cfg.slice_column)


def load_splits(data_cfg: DataConfig, tokenizer, seed: int, train: tuple[str, list[Example]] | None = None) -> Splits:
    """All splits, tokenized. `train`: the training file as `read_train` returned it, if already read."""
    schema, train_examples = train or read_train(data_cfg)
    notes = [f"schema: {schema} ({'detected' if data_cfg.schema == 'auto' else 'configured'})"]
    # Classes come from the whole training file, before any validation split.
    labels = label_vocabulary(train_examples, data_cfg.train) if schema == "classification" else None

    validation_examples = None
    if data_cfg.validation:
        _, validation_examples = read_examples(data_cfg.validation, schema, "validation", data_cfg.slice_column)
    elif data_cfg.validation_fraction > 0 and len(train_examples) >= 20:
        # Split off a fixed, seeded fraction; the rest trains. Nothing is lost.
        order = list(range(len(train_examples)))
        random.Random(seed).shuffle(order)
        n_val = max(1, int(len(order) * data_cfg.validation_fraction))
        held = set(order[:n_val])
        validation_examples = [ex for i, ex in enumerate(train_examples) if i in held]
        train_examples = [ex for i, ex in enumerate(train_examples) if i not in held]
        notes.append(f"validation: {n_val} examples split off train (data.validation_fraction)")
    test_examples = read_examples(data_cfg.test, schema, "test", data_cfg.slice_column)[1] if data_cfg.test else None
    overlap = split_overlap({"train": train_examples, "validation": validation_examples, "test": test_examples})
    if data_cfg.overlap == "error":
        refuse_overlap(overlap)
    notes.extend(f"warning: {line}" for line in overlap_warnings(overlap))

    train = _tokenize_split("train", train_examples, tokenizer, schema, data_cfg, labels)
    labelled = check_has_labels(train.tokenized, data_cfg.train)
    unit = "examples" if labels else "pairs" if schema == "preference" else "labelled tokens"
    notes.append(f"train: {len(train_examples)} examples, {len(train.tokenized)} sequences, {labelled:,} {unit}")
    if labels:
        notes.append(f"classes: {', '.join(labels)}")
    validation = (_tokenize_split("validation", validation_examples, tokenizer, schema, data_cfg, labels)
                  if validation_examples else None)
    test = _tokenize_split("test", test_examples, tokenizer, schema, data_cfg, labels) if test_examples else None
    for split in (train, validation, test):
        repeats = split.repeats if split is not None else []
        if repeats:  # kept: repeating an example may be deliberate, but the user should know
            repeat, original = repeats[0]
            notes.append(f"warning: {split.name}: {len(repeats)} duplicate rows kept (first: {repeat.where} repeats "
                         f"line {original.line})")
        if split is not None and split.num_truncated:
            notes.append(f"{split.name}: {split.num_truncated} examples truncated to data.max_length={data_cfg.max_length}")
    return Splits(schema, train, validation, test, notes, labels, overlap)

