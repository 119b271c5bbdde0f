"""Forgetting: how much general ability a tuned model lost, measured on general-domain text.

    decoders (causal LM):  forgetting = ppl_tuned / ppl_base − 1       (0: nothing lost; 0.2: 20 % worse)
    classifiers:           forgetting = acc_probe(base) − acc_probe(tuned)

The probe is a logistic regression on mean-pooled last hidden states that predicts the topic of general
sentences (5-fold cross-validated, fixed folds), so it asks whether the body still encodes general meaning
after its head was trained for something else.

`general/general.jsonl` holds 48 paragraphs on 8 topics written for transferkit. Paragraphs 0, 2, 4 of each
topic are the *reference* (measurement only); 1, 3, 5 are the *pool* that mitigations train on (replay, the
EWC Fisher), so the text that measures forgetting is never trained on.
"""

from __future__ import annotations

import contextlib
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..data import read_examples
from ..data.schema import Example
from ..data.tokenize import Tokenized, tokenize_examples
from ..errors import ConfigError
from .metrics import mean_loss

PACKAGED = "general"


def general_paragraphs(part: str) -> list[dict]:
    """The packaged paragraphs of one part ('reference' or 'pool'), each {"topic", "text"}."""
    lines = resources.files(__package__).joinpath("general/general.jsonl").read_text(encoding="utf-8").splitlines()
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


@torch.no_grad()
def pooled_hidden_states(model, tokenizer, texts: list[str], device, autocast=contextlib.nullcontext,
                         batch_size: int = 16) -> np.ndarray:
    """Mean of the last layer's hidden states over real tokens, one row per text: [N, hidden]."""
    was_training = model.training
    model.eval()
    rows = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start: start + batch_size], padding=True, return_tensors="pt").to(device)
        with autocast():
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
        hidden = out.hidden_states[-1].float()                       # [B, T, H]
        hidden = hidden[:, hidden.shape[1] - enc["input_ids"].shape[1]:]  # drop prompt-tuning virtual tokens
        mask = enc["attention_mask"].unsqueeze(-1).float()           # [B, T, 1]
        rows.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    model.train(was_training)
    return torch.cat(rows).cpu().numpy()


def probe_accuracy(features: np.ndarray, topics: list[str], folds: int = 5) -> float:
    """Cross-validated accuracy of a standardised logistic-regression probe (fixed, seeded folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    return float(np.mean(cross_val_score(probe, features, topics, cv=splits)))


def check_reference(reference: str, task: str) -> None:
    """Refuse a reference the task cannot be measured on, and read a user's file now (its errors name it)."""
    if reference in (PACKAGED, "none"):
        return
    if task != "causal-lm":
        raise ConfigError("config key 'forgetting.reference': classifiers are probed on the packaged topic "
                          "task; set it to 'general' or 'none'")
    general_texts(reference, "reference")


def general_ability(model, tokenizer, task: str, reference: str, device, *, autocast=contextlib.nullcontext,
                    max_length: int = 1024, batch_size: int = 16) -> dict | None:
    """What forgetting is measured on: general-text perplexity (causal LM) or probe accuracy (classification).
    None when `reference` is 'none'."""
    if reference == "none":
        return None
    if task == "causal-lm":
        sequences = general_sequences(tokenizer, reference, "reference", max_length)
        result = mean_loss(model, sequences, tokenizer.pad_token_id, batch_size, device, autocast)
        return {"kind": "perplexity", "reference": reference, **result}
    check_reference(reference, task)
    sentences, topics = probe_sentences()
    features = pooled_hidden_states(model, tokenizer, sentences, device, autocast, batch_size)
    return {"kind": "probe", "reference": reference, "probe_accuracy": probe_accuracy(features, topics),
            "sentences": len(sentences)}


def forgetting(base: dict | None, tuned: dict | None) -> dict | None:
    """Base vs tuned general ability and the forgetting figure (see the module docstring)."""
    if base is None or tuned is None:
        return None
    if base["kind"] == "perplexity":
        return {"measure": "relative perplexity increase on general text", "reference": base["reference"],
                "base_perplexity": base["perplexity"], "tuned_perplexity": tuned["perplexity"],
                "forgetting": tuned["perplexity"] / base["perplexity"] - 1}
    return {"measure": "drop of general-topic probe accuracy", "reference": base["reference"],
            "base_probe_accuracy": base["probe_accuracy"], "tuned_probe_accuracy": tuned["probe_accuracy"],
            "forgetting": base["probe_accuracy"] - tuned["probe_accuracy"]}
