"""Greedy generation for chat prompts, batched with left padding."""

from __future__ import annotations

import contextlib

import torch

from ..data.tokenize import encode_chat, ensure_chat_template


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            ids.add(tid)
    return sorted(ids)


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int, batch_size: int,
                         device, autocast=contextlib.nullcontext, progress=None) -> list[str]:
    """Greedy completions (decoded, special tokens removed) for chat prompts."""
    ensure_chat_template(tokenizer)
    was_training = model.training
    model.eval()
    encoded = [encode_chat(tokenizer, p, add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    stops = stop_token_ids(tokenizer)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        # Left padding: every prompt ends at the same column, so generated
        # tokens line up. Shapes [B, width].
        input_ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(encoded[i])
            input_ids[row, width - n:] = torch.tensor(encoded[i])
            attention[row, width - n:] = 1
        with autocast():
            generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                       max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                       pad_token_id=tokenizer.pad_token_id)
        for row, i in enumerate(idx):
            outputs[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
        if progress is not None:
            progress(len(idx))
    model.train(was_training)
    return outputs
