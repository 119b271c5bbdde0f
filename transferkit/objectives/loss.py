"""Token-level causal-LM loss that only computes logits where labels exist.

The output head of a small model is a large share of its FLOPs (SmolLM2-135M:
576 × 49,152 = 28M of 135M parameters), and with completion-only loss most
positions carry no label. So we run the decoder body, gather the hidden
states of labelled positions and apply the head to those alone: no
[B, T, vocab] logits tensor is ever built. A model sharded by FSDP is the
exception: its root gathers the embeddings and the head only when the whole
model is called, so it computes the full logits.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from ..data.tokenize import IGNORE
from ..models.heads import underlying_model, uses_virtual_tokens


def _sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP shards `model`; torch's FSDP module (about a second to import) is only looked at once the
    training of several processes has imported it."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def _body_and_head(model: torch.nn.Module):
    """(decoder body returning last_hidden_state, output head) or None."""
    if uses_virtual_tokens(model) or _sharded(model):
        return None
    inner = underlying_model(model)
    get_decoder = getattr(inner, "get_decoder", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if get_decoder is None or head is None:
        return None
    body = get_decoder()
    if body is None or body is inner:
        return None
    return body, head


def _labelled_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """(logits [N, vocab] at the N labelled positions, their targets [N], mask keep [B, T-1]).

    batch: input_ids, labels and either attention_mask (padded rows) or
    position_ids (packed rows), each [B, T]. Labels are aligned with inputs;
    position t predicts labels[t + 1].
    """
    # No KV cache in training: it costs memory, and with a cache transformers
    # ignores the position-id restarts that mark packed sequences.
    inputs = {k: v for k, v in batch.items() if k != "labels"} | {"use_cache": False}
    targets = batch["labels"][:, 1:]                      # [B, T-1]
    keep = targets != IGNORE                              # [B, T-1]
    parts = _body_and_head(model)
    if parts is None:  # models without a separable head: full logits
        logits = model(**inputs).logits
        # Prompt tuning returns logits for its virtual tokens first: drop them. [B, T-1, vocab]
        logits = logits[:, logits.shape[1] - batch["input_ids"].shape[1]:][:, :-1]
        selected = logits[keep]
    else:
        body, head = parts
        hidden = body(**inputs).last_hidden_state
        selected = head(hidden[:, :-1][keep])            # [N, vocab], N = labelled positions
    return selected, targets[keep], keep


def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropy over labelled positions, number of them)."""
    selected, targets, keep = _labelled_logits(model, batch)
    return F.cross_entropy(selected.float(), targets, reduction="sum"), keep.sum()


def token_loss_per_row(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy sum per row [B], labelled positions per row [B]): for per-example evaluation."""
    selected, targets, keep = _labelled_logits(model, batch)
    losses = F.cross_entropy(selected.float(), targets, reduction="none")   # [N]
    rows = keep.nonzero()[:, 0]                                              # row of each labelled position
    return torch.zeros(keep.shape[0], device=losses.device).index_add_(0, rows, losses), keep.sum(1)
