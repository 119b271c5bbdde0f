"""Counting and collecting a model's parameters, each tensor once.

A tensor can sit under several names: SmolLM2's input embedding is its output head (`tie_word_embeddings`).
Every count and every selection here sees such a tensor once, under its first name.
"""

from __future__ import annotations

from typing import Iterator

import torch


def unique_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(first name, parameter) for every distinct parameter tensor."""
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) not in seen:
            seen.add(id(param))
            yield name, param


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors counted once."""
    trainable = total = 0
    for _, param in unique_parameters(model):
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def format_trainable(trainable: int, total: int) -> str:
    """The line `peft`'s `print_trainable_parameters` prints."""
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (an FSDP DTensor) gathered whole — a collective every rank of the run takes part in —
    and any other tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`value` (a whole tensor) laid out as `param` is: this rank's shard of it for an FSDP DTensor (cut locally,
    no communication: every rank holds the same whole value), else `value` itself."""
    if not hasattr(param, "device_mesh"):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None)


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters as detached whole CPU tensors, by name: what adapters and checkpoints store. On
    CPU they share storage with the parameters; clone them to keep a snapshot. FSDP-sharded parameters are
    gathered (`whole`): every rank must call this together."""
    return {name: whole(p.detach()).contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy `tensors` (as `trainable_tensors` gives them) into `model`'s trainable parameters; refuses a set of
    names other than the trainable ones, naming `source`."""
    params = dict(model.named_parameters())
    if set(tensors) != {n for n, p in params.items() if p.requires_grad}:
        raise RuntimeError(f"{source} parameters do not match the model's trainable parameters")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(like(value, params[name]))
