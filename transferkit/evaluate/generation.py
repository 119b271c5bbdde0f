"""Greedy generation for chat prompts: batched, shortest prompts together, a shared prompt prefix computed once.

Prompts that begin alike (the k-shot baseline: the same shots before every test prompt, 356 of ~380 tokens on
the quickstart) share their keys and values: the longest common token prefix P is run once, and each batch is

    input_ids = prefix (P tokens) ‖ left-padded suffixes      attention_mask = 1…1 ‖ 0…0 1…1
    past_key_values = the prefix's cache, repeated for the batch

so the model only reads the suffixes; position ids follow the attention mask, so every suffix continues at
position P whatever its padding. Measured on SmolLM2-135M, 2 cores: 100 quickstart 4-shot answers in 18 s
instead of 44 s. In bf16 a few greedy answers differ from the uncached ones (the prefix is computed in
another batch shape; 11 of 100 there), as any change of batching does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data.tokenize import encode_chat, ensure_chat_template
from ..models.heads import uses_virtual_tokens
from ..runtime import Runtime, for_inference

MIN_SHARED_PREFIX = 64  # tokens; a shorter common prefix is not worth a cache copy per batch


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            ids.add(tid)
    return sorted(ids)


def left_padded(encoded: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask), each [B, width]. Left padding: every prompt ends at the same column, so
    generated tokens line up."""
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention[row, width - len(ids):] = 1
    return input_ids, attention


def shared_prefix_length(encoded: list[list[int]]) -> int:
    """Tokens every prompt begins with, leaving each at least one of its own."""
    shortest = min(len(ids) for ids in encoded)
    first = encoded[0]
    common = next((i for i in range(shortest) if any(ids[i] != first[i] for ids in encoded)), shortest)
    return min(common, shortest - 1)


class SharedPrefix:
    """The keys and values of the prompts' common prefix, computed once (nothing when it is short)."""

    def __init__(self, model, encoded: list[list[int]], runtime: Runtime):
        length = shared_prefix_length(encoded) if not uses_virtual_tokens(model) else 0
        self.ids = encoded[0][:length] if length >= MIN_SHARED_PREFIX else []
        self.cache = None
        if self.ids:
            with runtime.autocast():
                self.cache = model(input_ids=torch.tensor([self.ids], device=runtime.device),
                                   use_cache=True).past_key_values

    def batch(self, encoded: list[list[int]], pad_id: int, device) -> dict:
        """generate()'s inputs for a batch of these prompts: prefix ‖ left-padded suffixes, and its cache."""
        input_ids, attention = left_padded([ids[len(self.ids):] for ids in encoded], pad_id)
        inputs = {"input_ids": input_ids, "attention_mask": attention}
        if self.cache is not None:
            prefix = torch.tensor([self.ids]).expand(len(encoded), -1)
            inputs = {"input_ids": torch.cat([prefix, input_ids], 1),
                      "attention_mask": torch.cat([torch.ones_like(prefix), attention], 1)}
        inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)  # generate() extends the cache it is given
            cache.batch_repeat_interleave(len(encoded))
            inputs["past_key_values"] = cache
        return inputs


@dataclass(frozen=True)
class Sampling:
    """Sampled instead of greedy decoding: softmax(logits / temperature), cut to the smallest set of tokens holding
    `top_p` of the probability (nucleus sampling, Holtzman et al. 2020); `seed` makes it repeatable (None: not
    seeded)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = 0

    def generate_kwargs(self) -> dict:
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int, batch_size: int,
                         runtime: Runtime, desc: str | None = None, sampling: Sampling | None = None) -> list[str]:
    """Completions (decoded, special tokens removed) for chat prompts, greedy unless `sampling` is given; `desc`
    names a progress bar."""
    if sampling is not None and sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    decoding = sampling.generate_kwargs() if sampling is not None else {"do_sample": False}
    ensure_chat_template(tokenizer)
    encoded = [encode_chat(tokenizer, p, add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    stops = stop_token_ids(tokenizer)
    with for_inference(model), tqdm(total=len(encoded), desc=desc, unit="ex", leave=False, disable=desc is None) as bar:
        prefix = SharedPrefix(model, encoded, runtime) if encoded else None
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            inputs = prefix.batch([encoded[i] for i in idx], tokenizer.pad_token_id, runtime.device)
            with runtime.autocast():
                generated = model.generate(**inputs, max_new_tokens=max_new_tokens, **decoding,
                                           eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
            width = inputs["input_ids"].shape[1]
            for row, i in enumerate(idx):
                outputs[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
            bar.update(len(idx))
    return outputs
