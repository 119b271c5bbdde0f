"""Length-grouped batching and padding collation.

Length grouping (as in `transformers`' LengthGroupedSampler) shuffles the
data, sorts each window of `window` batches by length and cuts it into
batches, so a batch holds similar lengths and padding stays small while the
order is still random. The order is a pure function of (seed, epoch), which
is what makes the data position resumable.
"""

from __future__ import annotations

import random

import torch

from .tokenize import IGNORE, Tokenized


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                           window: int = 50) -> list[list[int]]:
    """Index batches for one epoch; every index appears exactly once."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * window
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start: start + span], key=lambda i: -lengths[i])
        batches.extend(chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(items: list[Tokenized], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad to the longest item. Shapes: [B, T] each."""
    width = max(len(t.input_ids) for t in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": attention_mask.to(device)}
