"""Prompting baseline: what the base model scores with no training at all, zero-shot and k-shot.

One strategy per (data schema, architecture), like `OBJECTIVES` per task:

| schema, architecture     | how the untrained model is asked                                                   |
|--------------------------|------------------------------------------------------------------------------------|
| instruction, decoder     | greedy answers; k-shot puts k training conversations before each prompt; zero-shot |
|                          | is a plain evaluation, which also gives the reference answers' loss                |
| lm, decoder              | the base model's loss and perplexity (nothing to prompt; zero-shot only)           |
| preference, decoder      | the base model's preference accuracy: the share of pairs whose chosen answer it    |
|                          | already finds the more likely (zero-shot only)                                     |
| classification, decoder  | each label's verbalisation scored by its log-likelihood after                      |
|                          | "Classify the text as one of: a, b, c.\n\n" + k × "Text: …\nLabel: <label>\n\n" +   |
|                          | "Text: <text>\nLabel:"; class probabilities = softmax over the labels. Prompted      |
|                          | through the base with its own language-model head                                  |
| classification, encoder  | each class is the mean pooled embedding of its name (and of its shots); class      |
|                          | probabilities = softmax of cosine similarities at temperature 0.05                 |
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import torch

from ..data import Split
from ..data.schema import Example, prompt_and_reference
from ..data.tokenize import IGNORE, Tokenized, encode_chat, ensure_chat_template
from ..models import load_model
from ..options import EvalConfig
from ..runtime import Runtime
from .forgetting import pooled_hidden_states
from .generation import generate_completions
from .metrics import per_example_token_losses
from .split import answer_predictions, class_results, evaluate_split, generation_metrics, with_slices
from .task_metrics import resolve_task_metric

COSINE_TEMPERATURE = 0.05


@dataclass(frozen=True)
class Prompted:
    """What a strategy scores: the untrained model (a causal LM where `needs_lm_head`), its tokenizer and the
    split, with the evaluation settings."""

    model: torch.nn.Module
    tokenizer: object
    split: Split
    schema: str
    eval_cfg: EvalConfig
    runtime: Runtime
    labels: list[str] | None = None

    @property
    def examples(self) -> list[Example]:
        limit = self.eval_cfg.max_examples
        return self.split.examples[:limit] if limit else self.split.examples


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


# ---------------------------------------------------------------- instruction and lm

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


Scored = tuple[dict, list[dict]]  # (metrics, per-example predictions)


def plain_evaluation(p: Prompted, shots: list[Example]) -> Scored:
    """The untrained model evaluated like a tuned one: loss, perplexity (and for instruction data the
    zero-shot answers' exact match, token F1 and task metric)."""
    return evaluate_split(p.model, p.tokenizer, p.split, p.schema, p.eval_cfg, p.runtime, label="baseline zero-shot")


def instruction_answers(p: Prompted, shots: list[Example]) -> Scored:
    """Zero-shot: a plain evaluation. k-shot: exact match, token F1 and the task metric of greedy answers to
    prompts that show the shots first."""
    if not shots:
        return plain_evaluation(p, shots)
    ensure_chat_template(p.tokenizer)
    examples = p.examples
    prompts = [fitting_prompt(p.model, p.tokenizer, ex, shots, p.eval_cfg.max_new_tokens) for ex in examples]
    references = [prompt_and_reference(ex)[1] for ex in examples]
    outputs = generate_completions(p.model, p.tokenizer, prompts, max_new_tokens=p.eval_cfg.max_new_tokens,
                                   batch_size=p.eval_cfg.batch_size, runtime=p.runtime,
                                   desc=f"baseline {len(shots)}-shot: generating")
    task_metric = resolve_task_metric(p.eval_cfg.task_metric)
    metrics = with_slices(examples, lambda idx: {"examples": len(idx), **generation_metrics(
        [outputs[i] for i in idx], [references[i] for i in idx], task_metric)})
    return metrics, answer_predictions(examples, references, outputs)


# ---------------------------------------------------------------- classification

def _text_block(example: Example) -> str:
    pair = f"\nSecond text: {example.text_pair}" if example.text_pair is not None else ""
    return f"Text: {example.text}{pair}\nLabel:"


def classification_prompt(example: Example, shots: list[Example], labels: list[str]) -> str:
    header = f"Classify the text as one of: {', '.join(labels)}.\n\n"
    return header + "".join(f"{_text_block(s)} {s.label}\n\n" for s in shots) + _text_block(example)


def verbalisation_log_likelihoods(lm, tokenizer, prompts: list[str], verbalisations: list[str], batch_size: int,
                                  runtime: Runtime) -> list[list[float]]:
    """log p(verbalisation | prompt) under `lm` for every prompt × verbalisation: [prompts][verbalisations]."""
    label_ids = [tokenizer(" " + v, add_special_tokens=False)["input_ids"] for v in verbalisations]
    sequences = []
    for prompt in prompts:
        prompt_ids = tokenizer(prompt)["input_ids"]
        for ids in label_ids:  # only the verbalisation's tokens are scored
            sequences.append(Tokenized(prompt_ids + ids, [IGNORE] * len(prompt_ids) + ids, "prompt"))
    losses = per_example_token_losses(lm, sequences, tokenizer.pad_token_id, batch_size, runtime)
    n = len(verbalisations)
    return [[-losses[p * n + c][0] for c in range(n)] for p in range(len(prompts))]


def normalise(scores: list[float]) -> list[float]:
    """log-softmax over one example's class scores."""
    top = max(scores)
    log_total = top + math.log(sum(math.exp(s - top) for s in scores))
    return [s - log_total for s in scores]


def verbaliser_log_probs(lm, tokenizer, examples: list[Example], shots: list[Example], labels: list[str],
                         batch_size: int, runtime: Runtime) -> list[list[float]]:
    """Class log-probabilities [examples][classes] of an untrained decoder: its label verbalisations'
    likelihoods after the classification prompt, normalised over the labels."""
    prompts = [classification_prompt(ex, shots, labels) for ex in examples]
    return [normalise(s) for s in verbalisation_log_likelihoods(lm, tokenizer, prompts, labels, batch_size, runtime)]


def centroid_log_probs(model, tokenizer, examples: list[Example], shots: list[Example], labels: list[str],
                       batch_size: int, runtime: Runtime) -> list[list[float]]:
    """Class log-probabilities [examples][classes] of an untrained encoder: cosine similarity of each text's
    pooled embedding to each class centroid (its name's embedding and its shots')."""
    def embed(texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(pooled_hidden_states(model, tokenizer, texts, runtime, batch_size))

    texts = [ex.text if ex.text_pair is None else f"{ex.text} {ex.text_pair}" for ex in examples]
    names = embed(labels)
    centroids = []
    for c, name in enumerate(labels):  # mean of the name's embedding and the class's shots
        members = [s.text for s in shots if s.label == name]
        vectors = [names[c]] + (list(embed(members)) if members else [])
        centroids.append(torch.stack(vectors).mean(0))
    cosine = (torch.nn.functional.normalize(embed(texts), dim=-1)
              @ torch.nn.functional.normalize(torch.stack(centroids), dim=-1).T)   # [examples, classes]
    return (cosine / COSINE_TEMPERATURE).log_softmax(-1).tolist()


def class_scores(log_probs_of: Callable[..., list[list[float]]]) -> Callable[[Prompted, list[Example]], Scored]:
    """A classification strategy: class log-probabilities from `log_probs_of`, scored like a tuned classifier."""
    def score(p: Prompted, shots: list[Example]) -> Scored:
        examples = p.examples
        log_probs = log_probs_of(p.model, p.tokenizer, examples, shots, p.labels, p.eval_cfg.batch_size, p.runtime)
        return class_results(examples, log_probs, p.labels)
    return score


# ---------------------------------------------------------------- the strategy table

@dataclass(frozen=True)
class Strategy:
    score: Callable[[Prompted, list[Example]], Scored]   # the untrained model shown `shots`
    with_shots: bool = True                             # a k-shot variant exists
    needs_lm_head: bool = False                         # prompted through the base as a causal LM


STRATEGIES: dict[tuple[str, str], Strategy] = {
    ("instruction", "decoder"): Strategy(instruction_answers),
    ("lm", "decoder"): Strategy(plain_evaluation, with_shots=False),
    ("preference", "decoder"): Strategy(plain_evaluation, with_shots=False),
    ("classification", "decoder"): Strategy(class_scores(verbaliser_log_probs), needs_lm_head=True),
    ("classification", "encoder"): Strategy(class_scores(centroid_log_probs)),
}


def prompting_model(schema: str, architecture: str, model_ref: str, model, tokenizer, runtime: Runtime,
                    trust_remote_code: bool = False):
    """The model the strategy prompts: `model` itself, or for a decoder classifier a copy of the base with its
    own language-model head (its labels are scored as text), loaded here."""
    if STRATEGIES[schema, architecture].needs_lm_head:
        model, _, _ = load_model(model_ref, task="causal-lm", device=runtime.device, tokenizer=tokenizer,
                                 trust_remote_code=trust_remote_code)
    return model


def prompting_baseline(prompted: Prompted, architecture: str, train: list[Example], seed: int = 0
                       ) -> tuple[dict, dict]:
    """({"zero_shot": metrics, "<k>_shot": metrics}, {the same keys: per-example predictions}) of the untrained
    model on the split; the k shots are picked (seeded) from `train`."""
    strategy = STRATEGIES[prompted.schema, architecture]
    counts = sorted({0, prompted.eval_cfg.shots}) if strategy.with_shots else [0]
    scored = {shot_name(k): strategy.score(prompted, pick_shots(train, k, seed)) for k in counts}
    return {name: s[0] for name, s in scored.items()}, {name: s[1] for name, s in scored.items()}
