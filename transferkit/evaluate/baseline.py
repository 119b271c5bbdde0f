"""Prompting baseline: what the base model scores with no training at all, zero-shot and k-shot.

- instruction: greedy answers to the test prompts; k-shot puts k training conversations before each prompt.
- classification, decoder: each label's verbalisation is scored by its log-likelihood after the prompt
      "Classify the text as one of: a, b, c.\n\n" + k × "Text: …\nLabel: <label>\n\n" + "Text: <text>\nLabel:"
  and the class probabilities are the softmax of those log-likelihoods over the labels.
- classification, encoder (no language-model head): each class is represented by the mean pooled
  embedding of its name (zero-shot) and of its shots (k-shot); class probabilities are the softmax of
  cosine similarities at temperature 0.05.
- language modeling: the base model's loss and perplexity (there is nothing to prompt).

`compare` puts the tuned model beside the best baseline on the task's headline metric.
"""

from __future__ import annotations

import contextlib
import math
import random

import torch

from ..data import Split
from ..data.schema import Example, prompt_and_reference
from ..data.tokenize import IGNORE, Tokenized, encode_chat, ensure_chat_template
from .forgetting import pooled_hidden_states
from .generation import generate_completions
from .metrics import classification_metrics, per_example_token_losses
from .split import evaluate_split, generation_metrics, with_slices
from .task_metrics import resolve_task_metric

COSINE_TEMPERATURE = 0.05


def pick_shots(train: list[Example], k: int, seed: int) -> list[Example]:
    """k training examples, seeded. For classification, classes take turns (each class appears once
    before any appears twice), so a small k still shows every label it can."""
    rng = random.Random(seed)
    if k <= 0 or not train:
        return []
    if train[0].label is None:
        return rng.sample(train, min(k, len(train)))
    by_class: dict[str, list[Example]] = {}
    for ex in train:
        by_class.setdefault(ex.label, []).append(ex)
    queues = [rng.sample(v, len(v)) for _, v in sorted(by_class.items())]
    rng.shuffle(queues)
    shots: list[Example] = []
    while len(shots) < min(k, len(train)):
        for queue in queues:
            if queue and len(shots) < k:
                shots.append(queue.pop())
    return shots


def shot_name(k: int) -> str:
    return "zero_shot" if k == 0 else f"{k}_shot"


# ---------------------------------------------------------------- instruction

def instruction_prompt(example: Example, shots: list[Example]) -> list[dict]:
    """The example's prompt turns, preceded by each shot's conversation (its system message dropped)."""
    shown = [m for shot in shots for m in shot.messages if m["role"] != "system"]
    prompt, _ = prompt_and_reference(example)
    system = [m for m in prompt[:1] if m["role"] == "system"]
    return system + shown + prompt[len(system):]


def fitting_prompt(model, tokenizer, example: Example, shots: list[Example], max_new_tokens: int) -> list[dict]:
    """The k-shot prompt, with the earliest shots dropped while prompt + answer would overflow the context."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    for first in range(len(shots) + 1):
        prompt = instruction_prompt(example, shots[first:])
        if context is None or len(encode_chat(tokenizer, prompt, add_generation_prompt=True)) + max_new_tokens <= context:
            return prompt
    return prompt


def instruction_baseline(model, tokenizer, examples: list[Example], shots: list[Example], eval_cfg, device,
                         autocast, label: str) -> dict:
    """Exact match, token F1 and the task metric of greedy answers to k-shot prompts."""
    ensure_chat_template(tokenizer)
    prompts = [fitting_prompt(model, tokenizer, ex, shots, eval_cfg.max_new_tokens) for ex in examples]
    references = [prompt_and_reference(ex)[1] for ex in examples]
    outputs = generate_completions(model, tokenizer, prompts, max_new_tokens=eval_cfg.max_new_tokens,
                                   batch_size=eval_cfg.batch_size, device=device, autocast=autocast)
    task_metric = resolve_task_metric(eval_cfg.task_metric)
    return with_slices(examples, lambda idx: {"examples": len(idx), **generation_metrics(
        [outputs[i] for i in idx], [references[i] for i in idx], task_metric)})


# ---------------------------------------------------------------- classification

def _text_block(example: Example) -> str:
    pair = f"\nSecond text: {example.text_pair}" if example.text_pair is not None else ""
    return f"Text: {example.text}{pair}\nLabel:"


def classification_prompt(example: Example, shots: list[Example], labels: list[str]) -> str:
    header = f"Classify the text as one of: {', '.join(labels)}.\n\n"
    return header + "".join(f"{_text_block(s)} {s.label}\n\n" for s in shots) + _text_block(example)


def verbalisation_log_likelihoods(lm, tokenizer, prompts: list[str], verbalisations: list[str], batch_size: int,
                                  device, autocast=contextlib.nullcontext) -> list[list[float]]:
    """log p(verbalisation | prompt) under `lm` for every prompt × verbalisation: [prompts][verbalisations]."""
    label_ids = [tokenizer(" " + v, add_special_tokens=False)["input_ids"] for v in verbalisations]
    sequences = []
    for prompt in prompts:
        prompt_ids = tokenizer(prompt)["input_ids"]
        for ids in label_ids:  # only the verbalisation's tokens are scored
            sequences.append(Tokenized(prompt_ids + ids, [IGNORE] * len(prompt_ids) + ids, "prompt"))
    losses = per_example_token_losses(lm, sequences, tokenizer.pad_token_id, batch_size, device, autocast)
    n = len(verbalisations)
    return [[-losses[p * n + c][0] for c in range(n)] for p in range(len(prompts))]


def normalise(scores: list[float]) -> list[float]:
    """log-softmax over one example's class scores."""
    top = max(scores)
    log_total = top + math.log(sum(math.exp(s - top) for s in scores))
    return [s - log_total for s in scores]


def classification_baseline_scores(model, tokenizer, examples: list[Example], shots: list[Example],
                                   labels: list[str], is_decoder: bool, batch_size: int, device,
                                   autocast) -> list[list[float]]:
    """Class log-probabilities [examples][classes] of the untrained model (see the module docstring)."""
    if is_decoder:
        prompts = [classification_prompt(ex, shots, labels) for ex in examples]
        return [normalise(s) for s in
                verbalisation_log_likelihoods(model, tokenizer, prompts, labels, batch_size, device, autocast)]
    texts = [ex.text if ex.text_pair is None else f"{ex.text} {ex.text_pair}" for ex in examples]
    embed = torch.nn.functional.normalize(
        torch.from_numpy(pooled_hidden_states(model, tokenizer, texts, device, autocast, batch_size)), dim=-1)
    names = torch.from_numpy(pooled_hidden_states(model, tokenizer, labels, device, autocast, batch_size))
    centroids = []
    for c, name in enumerate(labels):  # mean of the name's embedding and the class's shots
        members = [s.text for s in shots if s.label == name]
        vectors = [names[c]]
        if members:
            vectors += list(torch.from_numpy(pooled_hidden_states(model, tokenizer, members, device, autocast,
                                                                  batch_size)))
        centroids.append(torch.stack(vectors).mean(0))
    cosine = embed @ torch.nn.functional.normalize(torch.stack(centroids), dim=-1).T   # [examples, classes]
    return (cosine / COSINE_TEMPERATURE).log_softmax(-1).tolist()


def classification_baseline(model, tokenizer, examples: list[Example], shots: list[Example], labels: list[str],
                            is_decoder: bool, eval_cfg, device, autocast) -> dict:
    log_probs = classification_baseline_scores(model, tokenizer, examples, shots, labels, is_decoder,
                                               eval_cfg.batch_size, device, autocast)
    golds = [labels.index(ex.label) for ex in examples]
    return with_slices(examples, lambda idx: classification_metrics(
        [log_probs[i] for i in idx], [golds[i] for i in idx], labels))


# ---------------------------------------------------------------- entry point

def prompting_model(model_ref: str, folder, task: str, model, tokenizer, device, trust_remote_code: bool = False):
    """(model to prompt, whether it is a decoder) for the base `model` loaded from `folder`. A decoder
    classifier's labels are scored as text, so it is prompted through a copy of the base with its own
    language-model head, loaded here; everything else is prompted as it is."""
    from ..models import load_model
    from ..models.loading import ENCODER_TYPES, model_type

    is_decoder = model_type(folder) not in ENCODER_TYPES
    if task == "classification" and is_decoder:
        model, _, _ = load_model(model_ref, task="causal-lm", device=device, tokenizer=tokenizer,
                                 trust_remote_code=trust_remote_code)
    return model, is_decoder


def prompting_baseline(model, tokenizer, split: Split, schema: str, train: list[Example], eval_cfg, device, *,
                       autocast=contextlib.nullcontext, labels: list[str] | None = None, is_decoder: bool = True,
                       seed: int = 0) -> dict:
    """{"zero_shot": metrics, "<k>_shot": metrics} of the untrained `model` on `split`.

    `model` is a causal LM for instruction / lm data and for decoder classification; for encoder
    classification, any model whose forward returns hidden states."""
    examples = split.examples[: eval_cfg.max_examples] if eval_cfg.max_examples else split.examples
    if schema == "lm":
        metrics, _ = evaluate_split(model, tokenizer, split, schema, eval_cfg, device, autocast=autocast,
                                    label="baseline")
        return {"zero_shot": metrics}
    results = {}
    for k in sorted({0, eval_cfg.shots}):
        shots = pick_shots(train, k, seed)
        if schema == "classification":
            results[shot_name(k)] = classification_baseline(model, tokenizer, examples, shots, labels, is_decoder,
                                                            eval_cfg, device, autocast)
        elif k == 0:  # zero-shot is a plain evaluation: it also gives the reference answers' loss
            results[shot_name(k)], _ = evaluate_split(model, tokenizer, split, schema, eval_cfg, device,
                                                      autocast=autocast, label="baseline")
        else:
            results[shot_name(k)] = instruction_baseline(model, tokenizer, examples, shots, eval_cfg, device,
                                                         autocast, f"baseline {k}-shot")
    return results


# ---------------------------------------------------------------- comparison

LOWER_IS_BETTER = {"loss", "perplexity"}


def headline_metric(schema: str, tuned: dict) -> str:
    """The one number a run is judged by: accuracy; for instruction data the task metric's headline,
    else exact match; perplexity when nothing was generated."""
    if schema == "classification":
        return "accuracy"
    if schema == "instruction":
        if tuned.get("task_metric_headline") in tuned:
            return tuned["task_metric_headline"]
        if "exact_match" in tuned:
            return "exact_match"
    return "perplexity"


def compare(schema: str, tuned: dict, baselines: dict[str, dict]) -> dict:
    """Tuned vs the best prompting baseline on the headline metric. gain > 0 means the tuned model is better
    (for loss and perplexity, gain = baseline − tuned)."""
    metric = headline_metric(schema, tuned)
    lower = metric in LOWER_IS_BETTER
    scored = {name: m[metric] for name, m in baselines.items() if metric in m and not math.isnan(m[metric])}
    if not scored:
        return {"metric": metric, "tuned": tuned.get(metric), "baseline": None, "gain": None, "beats_baseline": None}
    best = (min if lower else max)(scored, key=scored.get)
    gain = (scored[best] - tuned[metric]) if lower else (tuned[metric] - scored[best])
    return {"metric": metric, "higher_is_better": not lower, "tuned": tuned[metric], "baseline": scored[best],
            "baseline_prompt": best, "gain": gain, "beats_baseline": gain > 0}
