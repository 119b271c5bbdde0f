"""Examples that occur in two splits: held-out data leaking into training.

An example's content is what the model reads: a classification text (and its pair), the prompt turns of an
instruction conversation (a test prompt seen in training is a leak whatever its answer), a language-model
text. Two contents match exactly, or after normalisation: case folded, every run of whitespace one space,
outer whitespace stripped. Counted for every pair of splits, the later split's examples against the earlier's:

    "train/validation", "train/test", "validation/test":
        {"exact": n, "normalised": m, "first": "<later file:line> = <earlier file:line>" or None}

`exact` ≤ `normalised`. With `data.overlap: error` the first overlapping example stops the run.
"""

from __future__ import annotations

import json
import re

from ..errors import DataError
from .schema import Example, prompt_and_reference

PAIRS = (("train", "validation"), ("train", "test"), ("validation", "test"))
WHITESPACE = re.compile(r"\s+")


def content(example: Example, normalised: bool = False) -> str:
    """What the model reads from `example` (labels and answers left out), optionally normalised."""
    if example.messages:
        parts = [part for m in prompt_and_reference(example)[0] for part in (m["role"], m["content"])]  # the prompt
    else:
        parts = [example.text, example.text_pair]
    return json.dumps([normalise(p) if normalised and p is not None else p for p in parts])


def normalise(text: str) -> str:
    return WHITESPACE.sub(" ", text.casefold()).strip()


def count_overlap(earlier: list[Example], later: list[Example]) -> dict:
    """How many examples of `later` also occur in `earlier`, exactly and after normalisation."""
    exact = {content(ex): ex for ex in earlier}
    loose = {content(ex, normalised=True): ex for ex in earlier}
    counts: dict = {"exact": 0, "normalised": 0, "first": None}
    for ex in later:
        key = content(ex)
        match = exact.get(key) or loose.get(content(ex, normalised=True))
        if match is None:
            continue
        counts["exact"] += key in exact
        counts["normalised"] += 1
        counts["first"] = counts["first"] or f"{ex.where} = {match.where}"
    return counts


def split_overlap(splits: dict[str, list[Example] | None]) -> dict[str, dict]:
    """{"train/test": counts, ...} for every pair of the splits that exist."""
    return {f"{a}/{b}": count_overlap(splits[a], splits[b]) for a, b in PAIRS if splits.get(a) and splits.get(b)}


def refuse_overlap(overlap: dict[str, dict]) -> None:
    """`data.overlap: error`: a `DataError` at the first example that occurs in an earlier split."""
    for pair, counts in overlap.items():
        if counts["normalised"]:
            earlier, later = pair.split("/")
            where, match = counts["first"].split(" = ")
            source, _, line = where.rpartition(":")
            raise DataError(source, f"this {later} example also occurs in {earlier} ({match}); "
                                    f"{counts['normalised']} such examples in all (data.overlap=warn keeps them)",
                            int(line) if line.isdigit() else None)


def overlap_warnings(overlap: dict[str, dict]) -> list[str]:
    """One line per pair of splits that share examples."""
    return [f"{counts['normalised']} {pair.split('/')[1]} examples also occur in {pair.split('/')[0]} "
            f"({counts['exact']} exactly, the rest after case/whitespace normalisation; first: {counts['first']}): "
            f"their scores overstate what the model learned"
            for pair, counts in overlap.items() if counts["normalised"]]
