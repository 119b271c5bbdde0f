"""Real tasks from text that ships in packages, for measuring defaults on data the project did not write.

    austen-novel    which of Jane Austen's six novels a passage comes from (6 classes, balanced). Each novel's
                    paragraphs, after the openings the forgetting reference uses (`general.AUSTEN_PARTS`), are
                    split by position: the first 70 % for train, the next 10 % for validation, the last 20 % for
                    test, so no passage and no neighbouring paragraph crosses splits.
    austen-speech   whether a paragraph is a character speaking or the narrator (2 classes, balanced): a
                    paragraph that opens with a quotation mark is speech, one without any is narration; the
                    quotation marks are removed, so the words must tell. Split by novel: train from Emma,
                    Mansfield Park, Pride and Prejudice and Sense and Sensibility; validation from Northanger Abbey;
                    test from Persuasion (both after the forgetting reference's openings).
    chitchat-reply  the next message of a human chat (instruction data: prompt = a message, completion = the
                    reply by the other person), from the `chitchat-dataset` package (MIT licence, 7,168
                    conversations); conversations, not pairs, are split, so no conversation crosses splits,
                    and a held-out message that also occurs in train ("hi how are you") is left out.

Passages are cut to the first `WORDS` words at a word boundary. Everything is seeded; `write_real_tasks`
writes the JSONL files `scripts/make_real_tasks.py` commits under data/.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from .austen import austen_file, novels
from .general import AUSTEN_PARTS
from .overlap import normalise

WORDS = 48
NOVEL_SIZES = {"train": 150, "validation": 40, "test": 80}    # per class
SPEECH_SIZES = {"train": 300, "validation": 80, "test": 150}  # per class
REPLY_SIZES = {"train": 1200, "validation": 100, "test": 200}  # pairs
SPEECH_SPLITS = {"train": ("Emma", "Mansfield Park", "Pride And Prejudice", "Sense And Sensibility"),
                 "validation": ("Northanger Abbey",), "test": ("Persuasion",)}


def passage(paragraph: str, words: int = WORDS) -> str:
    return " ".join(paragraph.replace("_", "").split()[:words])


def after_reference(title: str, paragraphs: list[str]) -> list[str]:
    """A novel's paragraphs after the opening that the forgetting reference reads (all of them for the others)."""
    budget = next((words for novel, words in AUSTEN_PARTS.values() if novel == title), 0)
    seen = 0
    for i, paragraph in enumerate(paragraphs):
        if seen >= budget:
            return paragraphs[i:]
        seen += len(paragraph.split())
    return []


def austen_books() -> dict[str, list[str]]:
    path = austen_file()
    if path is None:
        raise FileNotFoundError("Jane Austen's novels are not installed (scripts/setup.sh extracts r-cran-janeaustenr)")
    return {title: after_reference(title, paragraphs) for title, paragraphs in novels(path).items()}


def novel_task(seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {name: [] for name in NOVEL_SIZES}
    for title, paragraphs in sorted(austen_books().items()):
        n = len(paragraphs)
        ranges = {"train": paragraphs[: int(0.7 * n)], "validation": paragraphs[int(0.7 * n): int(0.8 * n)],
                  "test": paragraphs[int(0.8 * n):]}
        for split, pool in ranges.items():
            for paragraph in rng.sample(pool, NOVEL_SIZES[split]):
                splits[split].append({"text": passage(paragraph), "label": title})
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def speech_or_narration(paragraph: str) -> str | None:
    quotes = ('"', "\u201c", "\u201d")
    if paragraph.lstrip().startswith(quotes):
        return "speech"
    return "narration" if not any(q in paragraph for q in quotes) else None


def speech_task(seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    books = austen_books()
    splits = {}
    for split, titles in SPEECH_SPLITS.items():
        by_label: dict[str, list[str]] = {"speech": [], "narration": []}
        for title in titles:
            for paragraph in books[title]:
                label = speech_or_narration(paragraph)
                if label is not None:
                    by_label[label].append(passage(paragraph.replace('"', "").replace("\u201c", "")
                                                   .replace("\u201d", "")))
        rows = [{"text": text, "label": label} for label, texts in sorted(by_label.items())
                for text in rng.sample(texts, SPEECH_SIZES[split])]
        rng.shuffle(rows)
        splits[split] = rows
    return splits


def chitchat_conversations() -> dict[str, list[str]]:
    """{conversation id: its turns}, each turn one sender's consecutive messages joined."""
    import importlib.util

    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None:
        raise FileNotFoundError("the chitchat-dataset package is not installed (pip install chitchat-dataset)")
    data = json.loads((Path(list(spec.submodule_search_locations)[0]) / "dataset.json").read_text())
    return {cid: [" ".join(u["text"].strip() for u in turn) for turn in conv["messages"]]
            for cid, conv in data.items()}


def reply_task(seed: int = 0) -> dict[str, list[dict]]:
    """Pairs (message, reply) of 3–40 words each; each conversation lands in one split by a hash of its id."""
    rng = random.Random(seed)
    pools: dict[str, list[dict]] = {name: [] for name in REPLY_SIZES}
    for cid, turns in sorted(chitchat_conversations().items()):
        bucket = int(hashlib.sha256(cid.encode()).hexdigest(), 16) % 10
        split = "train" if bucket < 8 else "validation" if bucket == 8 else "test"
        for message, reply in zip(turns, turns[1:]):
            if 3 <= len(message.split()) <= 40 and 3 <= len(reply.split()) <= 40:
                pools[split].append({"prompt": message, "completion": reply})
    # Short messages recur across conversations ("hi how are you"): a held-out prompt never also occurs in train.
    seen = {normalise(row["prompt"]) for row in pools["train"]}
    for split in ("validation", "test"):
        pools[split] = [row for row in pools[split] if normalise(row["prompt"]) not in seen]
    return {split: rng.sample(rows, REPLY_SIZES[split]) for split, rows in pools.items()}


TASKS = {"austen-novel": novel_task, "austen-speech": speech_task, "chitchat-reply": reply_task}


def write_real_tasks(folder: str | Path, seed: int = 0) -> list[Path]:
    """data/<task>/{train,validation,test}.jsonl for every task."""
    written = []
    for name, build in TASKS.items():
        for split, rows in build(seed).items():
            path = Path(folder) / name / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            written.append(path)
    return written
