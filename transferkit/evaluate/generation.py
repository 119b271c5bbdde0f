"""Greedy generation for chat prompts, batched with left padding."""

from __future__ import annotations

import torch

from ..data.tokenize import encode_chat, ensure_chat_template
from ..runtime import Runtime, eval_mode


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


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int, batch_size: int,
                         runtime: Runtime, progress=None) -> list[str]:
    """Greedy completions (decoded, special tokens removed) for chat prompts, shortest prompts batched together."""
    ensure_chat_template(tokenizer)
    encoded = [encode_chat(tokenizer, p, add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    stops = stop_token_ids(tokenizer)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            input_ids, attention = left_padded([encoded[i] for i in idx], tokenizer.pad_token_id)
            with runtime.autocast():
                generated = model.generate(input_ids=input_ids.to(runtime.device),
                                           attention_mask=attention.to(runtime.device), max_new_tokens=max_new_tokens,
                                           do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
            for row, i in enumerate(idx):
                outputs[i] = tokenizer.decode(generated[row, input_ids.shape[1]:], skip_special_tokens=True)
            if progress is not None:
                progress(len(idx))
    return outputs
