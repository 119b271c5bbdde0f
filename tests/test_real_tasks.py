"""The real tasks under data/ (Jane Austen's novels, human chats): regenerable, balanced, splits disjoint."""

import json
from collections import Counter
from pathlib import Path

import pytest

from transferkit.data.austen import austen_file
from transferkit.data.overlap import normalise
from transferkit.data.real_tasks import TASKS, speech_or_narration

DATA = Path(__file__).resolve().parents[1] / "data"


def committed(task: str) -> dict[str, list[dict]]:
    return {split: [json.loads(line) for line in (DATA / task / f"{split}.jsonl").open()]
            for split in ("train", "validation", "test")}


def source_installed(task: str) -> bool:
    if task.startswith("austen"):
        return austen_file() is not None
    import importlib.util

    return importlib.util.find_spec("chitchat_dataset") is not None


@pytest.mark.parametrize("task", sorted(TASKS))
def test_committed_files_are_what_the_builder_writes(task):
    if not source_installed(task):
        pytest.skip(f"{task}: its source package is not installed here (scripts/setup.sh installs it)")
    assert TASKS[task](0) == committed(task)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_splits_share_no_example(task):
    splits = committed(task)
    key = (lambda row: normalise(row.get("text") or row["prompt"]))
    train, validation = {key(r) for r in splits["train"]}, {key(r) for r in splits["validation"]}
    assert not train & validation and not {key(r) for r in splits["test"]} & (train | validation)


@pytest.mark.parametrize("task, classes", [("austen-novel", 6), ("austen-speech", 2)])
def test_classes_are_balanced_in_every_split(task, classes):
    for split, rows in committed(task).items():
        counts = Counter(row["label"] for row in rows)
        assert len(counts) == classes and len(set(counts.values())) == 1, (split, counts)


def test_speech_is_told_by_words_not_quotation_marks():
    assert speech_or_narration('"I am sure," said she.') == "speech"
    assert speech_or_narration("She walked home alone.") == "narration"
    assert speech_or_narration('She said, "no".') is None  # mixed: in neither class
    rows = [r for rows in committed("austen-speech").values() for r in rows]
    assert not any(q in r["text"] for r in rows for q in ('"', "\u201c", "\u201d"))


def test_chitchat_replies_are_instruction_pairs():
    splits = committed("chitchat-reply")
    assert {len(rows) for rows in splits.values()} == {1200, 100, 200}
    assert all(set(r) == {"prompt", "completion"} and r["prompt"].strip() and r["completion"].strip()
               for rows in splits.values() for r in rows)
