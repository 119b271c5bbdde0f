"""Length-grouped batching, padding collation and packing.

Length grouping (as in `transformers`' LengthGroupedSampler) shuffles the
data, sorts each window of `window` batches by length and cuts it into
batches, so a batch holds similar lengths and padding stays small while the
order is still random. The order is a pure function of (seed, epoch), which
is what makes the data position resumable.

Packing (`collate_packed`) puts several sequences in one row with position
ids restarting at 0 for each and no attention mask; `transformers` reads the
restarts as sequence boundaries and builds a block-diagonal causal mask, so no
token attends across sequences (masking_utils.find_packed_sequence_indices).
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


def pack_rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """First-fit decreasing: item indices per row, each row at most max(row_tokens, longest) tokens."""
    capacity = max(row_tokens, max(lengths))
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= lengths[index]
    return rows


def collate_packed(items: list[Tokenized], pad_id: int, device: torch.device | str = "cpu",
                   row_tokens: int = 1024) -> dict[str, torch.Tensor]:
    """Pack `items` into rows; input_ids, labels, position_ids each [rows, T].

    Each sequence's first label is IGNORE: unpacked, position 0 has no
    predecessor, and packed it must not be predicted from the previous
    sequence. Row padding gets its own position run (0, 1, ...) and no labels."""
    rows = pack_rows([len(t.input_ids) for t in items], row_tokens)
    width = max(sum(len(items[i].input_ids) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for index in row:
            item = items[index]
            n = len(item.input_ids)
            input_ids[r, at: at + n] = torch.tensor(item.input_ids)
            labels[r, at + 1: at + n] = torch.tensor(item.labels[1:])
            position_ids[r, at: at + n] = torch.arange(n)
            at += n
        position_ids[r, at:] = torch.arange(width - at)
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "position_ids": position_ids.to(device)}
