"""General-domain English that no task trains on: what forgetting is measured on, and what replay and the
EWC Fisher draw from. Two sources, disjoint:

- the *reference* (measurement only), `forgetting.reference: general`: the opening of Jane Austen's
  *Persuasion* (16,000 words, about 21,000 SmolLM2 tokens), from Debian's `r-cran-janeaustenr`
  (`austen.py`); `general-validation` is the opening of *Northanger Abbey* (8,000 words), for choosing a
  mitigation's strength without looking at the figure that is reported. Without the package, `general`
  falls back to the reference half of the written text below;
- the *pool* (replay, the EWC Fisher): `corpus/general.jsonl`, 48 paragraphs on 8 topics written for
  transferkit; paragraphs 1, 3, 5 of each topic are the pool, 0, 2, 4 the fallback reference and the
  topic-probe sentences classifiers are measured on.

A user's own text file can stand in for either.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from ..errors import ConfigError
from .austen import austen_file, novels
from .schema import Example
from .splits import read_examples
from .tokenize import Tokenized, tokenize_examples

PACKAGED = "general"
PACKAGED_VALIDATION = "general-validation"
AUSTEN_PARTS = {PACKAGED: ("Persuasion", 16_000), PACKAGED_VALIDATION: ("Northanger Abbey", 8_000)}  # (novel, words)


def austen_reference(source: str) -> list[str] | None:
    """The opening paragraphs of the novel `source` names, up to its word budget (None without the package)."""
    path = austen_file()
    if path is None:
        return None
    title, words = AUSTEN_PARTS[source]
    chosen, total = [], 0
    for paragraph in novels(path)[title]:
        if total >= words:
            break
        chosen.append(paragraph)
        total += len(paragraph.split())
    return chosen


def describe_reference(source: str) -> str:
    """Which text a reference name stands for, here: recorded beside every forgetting figure."""
    if source in AUSTEN_PARTS:
        title, words = AUSTEN_PARTS[source]
        if austen_file() is not None:
            return f"Jane Austen, {title}, opening {words:,} words (Debian r-cran-janeaustenr)"
        if source == PACKAGED:
            return "transferkit's written general English, reference half (r-cran-janeaustenr not installed)"
    return source


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
    """Plain-text examples of `source` for `part` ('reference': what forgetting is measured on, 'pool': what
    replay and the Fisher use): the packaged texts (see the module docstring), or a user's .txt / text-column
    file (`key`: the config key that named it, for the error)."""
    if source in AUSTEN_PARTS and part == "reference":
        paragraphs = austen_reference(source)
        if paragraphs is not None:
            return [Example(f"<{describe_reference(source)}>", i + 1, text=text) for i, text in enumerate(paragraphs)]
        if source == PACKAGED_VALIDATION:
            raise ConfigError(f"config key '{key}': '{PACKAGED_VALIDATION}' is Jane Austen's Northanger Abbey, from "
                              f"Debian's r-cran-janeaustenr, which is not installed (scripts/setup.sh extracts it)")
    if source in AUSTEN_PARTS:
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
