"""Forgetting: how much general ability a tuned model lost, measured on general-domain text.

    decoders (causal LM):  forgetting = ppl_tuned / ppl_base − 1       (0: nothing lost; 0.2: 20 % worse)
    classifiers:           forgetting = acc_probe(base) − acc_probe(tuned)

The probe is a logistic regression on mean-pooled last hidden states that predicts the topic of general
sentences (5-fold cross-validated, fixed folds), so it asks whether the body still encodes general meaning
after its head was trained for something else. The texts are `data/general.py`'s: for decoders Jane Austen's
Persuasion (or the written fallback, or a user's own file), for the probe the written topic paragraphs.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.general import PACKAGED, describe_reference, general_sequences, general_texts, probe_sentences
from ..errors import ConfigError
from ..models.classifier import pool
from ..runtime import Runtime, for_inference
from .metrics import mean_loss


def pooled_hidden_states(model, tokenizer, texts: list[str], runtime: Runtime, batch_size: int = 16) -> np.ndarray:
    """Mean of the last layer's hidden states over real tokens, one row per text: [N, hidden]."""
    return layer_states(model, tokenizer, texts, runtime, batch_size, layers=[-1])[:, 0]


@torch.no_grad()
def layer_states(model, tokenizer, texts: list[str], runtime: Runtime, batch_size: int = 16,
                 layers: list[int] | None = None, pooling: str = "mean", desc: str | None = None) -> np.ndarray:
    """Each text's hidden states pooled over its real tokens, at the given layers (indices into the model's
    `hidden_states`: 0 the embeddings, -1 the last layer; None: all): [N, layers, hidden], float32. `pooling`: as
    the classifier pools (`models.classifier.pool`): "mean" over real tokens, "last" (the last real token: what a
    decoder has read the whole text into), "cls".
    Streams `batch_size` texts at a time; only the pooled rows are kept. `desc`: a progress bar's label."""
    rows = []
    with for_inference(model):
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=desc is None, unit="batch"):
            enc = tokenizer(texts[start: start + batch_size], padding=True, return_tensors="pt").to(runtime.device)
            with runtime.autocast():
                out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
            chosen = out.hidden_states if layers is None else [out.hidden_states[i] for i in layers]
            width = enc["input_ids"].shape[1]  # prompt tuning's virtual tokens come first: drop them
            rows.append(torch.stack([pool(h[:, h.shape[1] - width:].float(), enc["attention_mask"], pooling)
                                     for h in chosen], 1))                # [B, layers, H]
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
    if reference == "none":
        return
    if task != "causal-lm":
        if reference != PACKAGED:
            raise ConfigError("config key 'forgetting.reference': classifiers are probed on the packaged topic "
                              "task; set it to 'general' or 'none'")
        return
    general_texts(reference, "reference")


def general_ability(model, tokenizer, task: str, reference: str, runtime: Runtime, *, max_length: int = 1024,
                    batch_size: int = 16) -> dict | None:
    """What forgetting is measured on: general-text perplexity (causal LM) or probe accuracy (classification).
    None when `reference` is 'none'."""
    if reference == "none":
        return None
    if task == "causal-lm":
        sequences = general_sequences(tokenizer, reference, "reference", max_length)
        result = mean_loss(model, sequences, tokenizer.pad_token_id, batch_size, runtime, desc="general text: perplexity")
        return {"kind": "perplexity", "reference": reference, "text": describe_reference(reference), **result}
    check_reference(reference, task)
    sentences, topics = probe_sentences()
    features = pooled_hidden_states(model, tokenizer, sentences, runtime, batch_size)
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
