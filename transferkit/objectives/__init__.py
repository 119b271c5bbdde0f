"""What a batch looks like and what loss it gives, per model task; shared by training and evaluation.

An objective returns (sum of per-unit losses, number of units): units are
labelled tokens for causal LM and examples for classification. The loop
divides by the units of the whole optimizer step, which makes gradient
accumulation exact for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.batching import collate
from ..data.tokenize import Tokenized
from .loss import token_loss_sum


def collate_classes(items: list[Tokenized], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-padded inputs [B, T] and class ids [B]."""
    batch = collate([Tokenized(t.input_ids, [0] * len(t.input_ids), t.where) for t in items], pad_id, device)
    batch["labels"] = torch.tensor([t.labels[0] for t in items], dtype=torch.long, device=device)
    return batch


def class_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, classes]
    return F.cross_entropy(logits.float(), batch["labels"], reduction="sum"), torch.tensor(len(batch["labels"]))


@dataclass(frozen=True)
class Objective:
    collate: Callable[[list[Tokenized], int, torch.device], dict[str, torch.Tensor]]
    loss_sum: Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


OBJECTIVES = {
    "causal-lm": Objective(collate, token_loss_sum),
    "classification": Objective(collate_classes, class_loss_sum),
}
