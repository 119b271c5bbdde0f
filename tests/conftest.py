from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny import save_tiny_model_folder, tiny_tokenizer, write_jsonl  # noqa: E402

from transferkit.data.synthetic import person_records, topic_splits  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture()
def quick_data(tmp_path) -> dict[str, Path]:
    """Small instruction splits of the quickstart task."""
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", person_records(40, seed=1)),
        "validation": write_jsonl(tmp_path / "val.jsonl", person_records(6, seed=2)),
        "test": write_jsonl(tmp_path / "test.jsonl", person_records(4, seed=3)),
    }


@pytest.fixture(scope="session")
def written_reference(tmp_path_factory) -> Path:
    """The written general-English reference as a text file: the packaged default (Jane Austen, ~20k tokens)
    would cost the tiny-model tests seconds each, and they test the machinery, not the text."""
    from transferkit.data.general import general_paragraphs

    path = tmp_path_factory.mktemp("reference") / "general.txt"
    path.write_text("\n".join(row["text"] for row in general_paragraphs("reference")) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def tiny_config(tiny_model_dir, quick_data, tmp_path, written_reference):
    """A RunConfig on the tiny model that trains in about a second."""
    from transferkit.config import load_config

    def make(*overrides: str):
        base = {
            "model": str(tiny_model_dir),
            "data": {k: str(v) for k, v in quick_data.items()},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 6, "batch_size": 4, "lr": 1e-2, "log_every": 1, "eval_every": 3,
                      "save_every": 3, "precision": "fp32"},
            "eval": {"max_new_tokens": 8, "batch_size": 4},
            "forgetting": {"reference": str(written_reference)},
            "output_dir": str(tmp_path / "run"),
        }
        return load_config(None, list(overrides), base=base)

    return make


@pytest.fixture(scope="session")
def topics(tmp_path_factory):
    folder = tmp_path_factory.mktemp("topics")
    # No sentence in two splits; the 16 training sentences are repeated 4 times, so that the tiny random models
    # of these tests can fit them within a few dozen steps (64 distinct ones they cannot).
    splits = topic_splits({"train": 16, "validation": 12, "test": 16}, seed=1)
    splits["train"] = splits["train"] * 4
    return {split: write_jsonl(folder / f"{split}.jsonl", rows) for split, rows in splits.items()}


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    return save_tiny_model_folder(tmp_path_factory.mktemp("bert"), family="bert")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    return save_tiny_model_folder(tmp_path_factory.mktemp("qwen2"), family="qwen2")
