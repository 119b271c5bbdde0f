"""General-domain English that no task trains on: what forgetting is measured on, and what replay and the
EWC Fisher draw from.

`corpus/general.jsonl` holds 48 paragraphs on 8 topics written for transferkit. Paragraphs 0, 2, 4 of each
topic are the *reference* (measurement only); 1, 3, 5 are the *pool* that mitigations train on (replay, the
EWC Fisher), so the text that measures forgetting is never trained on. A user's own text file can stand in
for either part.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from ..errors import ConfigError
from .schema import Example
from .splits import read_examples
from .tokenize import Tokenized, tokenize_examples

PACKAGED = "general"


def general_paragraphs(part: str) -> list[dict]:
    """The packaged paragraphs of one part ('reference' or 'pool'), each {"topic", "text"}."""
    lines = resources.files(__package__).joinpath("corpus/general.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    rank: dict[str, int] = {}
    chosen = []
    for row in rows:  # the i-th paragraph of its topic: even → reference, odd → pool
        i = rank[row["topic"]] = rank.get(row["topic"], -1) + 1
        if (i % 2 == 0) == (part == "reference"):
            chosen.append(row)
    return chosen


def general_texts(source: str, part: str, key: str = "forgetting.reference") -> list[Example]:
    """Plain-text examples of `source`: the packaged part, or a user's .txt / text-column file
    (`key`: the config key that named it, for the error)."""
    if source == PACKAGED:
        return [Example(f"<packaged general text, {part}>", i + 1, text=row["text"])
                for i, row in enumerate(general_paragraphs(part))]
    if not Path(source).exists():
        raise ConfigError(f"config key '{key}': general text {source} not found "
                          f"(use 'general' for the packaged text, or a file)")
    return read_examples(source, "lm")[1]


def general_sequences(tokenizer, source: str, part: str, max_length: int, key: str = "forgetting.reference"
                      ) -> list[Tokenized]:
    """Tokenized language-modeling sequences of general text (every token labelled)."""
    return tokenize_examples(tokenizer, general_texts(source, part, key), "lm", max_length)


def probe_sentences() -> tuple[list[str], list[str]]:
    """(sentences, topics) of the packaged reference paragraphs: the fixed probe task for classifiers."""
    sentences, topics = [], []
    for row in general_paragraphs("reference"):
        for sentence in re.split(r"(?<=[.!?])\s+", row["text"]):
            if sentence.strip():
                sentences.append(sentence.strip())
                topics.append(row["topic"])
    return sentences, topics
