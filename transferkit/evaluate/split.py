"""Evaluate a model on one data split: loss, perplexity and, for instruction
data, exact match of greedy generations against the references."""

from __future__ import annotations

import contextlib

from tqdm.auto import tqdm

from ..data import Split
from ..data.schema import prompt_and_reference
from .generation import generate_completions
from .metrics import exact_match, lm_loss


def evaluate_split(model, tokenizer, split: Split, schema: str, eval_cfg, device, *,
                   autocast=contextlib.nullcontext, label: str = "eval") -> tuple[dict, list[dict]]:
    """(metrics, predictions). Predictions are empty unless exact match ran."""
    examples, tokenized = split.examples, split.tokenized
    if eval_cfg.max_examples is not None:
        examples, tokenized = examples[: eval_cfg.max_examples], tokenized[: eval_cfg.max_examples]
    metrics = lm_loss(model, tokenized, tokenizer.pad_token_id, eval_cfg.batch_size, device, autocast)
    metrics["examples"] = len(examples)
    predictions: list[dict] = []
    if schema == "instruction" and eval_cfg.exact_match:
        prompts, references = zip(*(prompt_and_reference(ex) for ex in examples))
        with tqdm(total=len(prompts), desc=f"{label}: generating", unit="ex", leave=False) as bar:
            outputs = generate_completions(model, tokenizer, list(prompts), max_new_tokens=eval_cfg.max_new_tokens,
                                           batch_size=eval_cfg.batch_size, device=device, autocast=autocast,
                                           progress=bar.update)
        metrics["exact_match"] = exact_match(outputs, list(references))
        predictions = [
            {"where": ex.where, "prompt": p[-1]["content"], "reference": r, "prediction": o,
             "match": o.strip() == r.strip()}
            for ex, p, r, o in zip(examples, prompts, references, outputs)
        ]
    return metrics, predictions
