"""What full fine-tuning, partial freezing and the linear probe share: they
train a subset of the model's own parameters (plus a new head for
classification), and their adapter is exactly those tensors.

    adapter/trainable.safetensors   the trained tensors, by parameter name
    adapter/transferkit_method.json method name, base model type, tensor shapes
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError

LAYER_INDEX = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")
EMBEDDING_HINTS = ("embed", "embeddings", "wte", "wpe")


def block_index(name: str) -> int | None:
    """Transformer block of a parameter name, or None (embeddings, head, final norm)."""
    match = LAYER_INDEX.search("." + name)
    return int(match.group(1)) if match else None


def num_blocks(model: torch.nn.Module) -> int:
    indices = {block_index(n) for n, _ in model.named_parameters()} - {None}
    return max(indices) + 1 if indices else 0


def is_embedding(name: str) -> bool:
    return block_index(name) is None and any(h in name for h in EMBEDDING_HINTS)


def set_trainable(model: torch.nn.Module, predicate) -> torch.nn.Module:
    """requires_grad = predicate(name) for every parameter. Tied tensors follow
    their first name (an input embedding tied to the output head is one tensor)."""
    seen = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        param.requires_grad_(bool(predicate(name)))
    return model


def save_trainable(model: torch.nn.Module, adapter_dir: Path, method: str, options: dict | None = None) -> None:
    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(adapter_dir / "trainable.safetensors"))
    meta = {"method": method, "options": options or {}, "model_type": getattr(model.config, "model_type", None),
            "shapes": {n: list(t.shape) for n, t in tensors.items()}}
    (adapter_dir / "transferkit_method.json").write_text(json.dumps(meta, indent=2))


def read_meta(adapter_dir: Path) -> dict:
    return json.loads((adapter_dir / "transferkit_method.json").read_text())


def load_trainable(base: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    """Copy the saved tensors into `base`, refusing an adapter made for another model."""
    meta = read_meta(adapter_dir)
    if meta.get("model_type") != getattr(base.config, "model_type", None):
        raise UserError(f"{adapter_dir}: adapter was trained on a '{meta.get('model_type')}' model, "
                        f"not '{base.config.model_type}'")
    saved = load_file(str(adapter_dir / "trainable.safetensors"))
    params = dict(base.named_parameters(remove_duplicate=False))
    for name, value in saved.items():
        if name not in params or params[name].shape != value.shape:
            raise UserError(f"{adapter_dir}: parameter '{name}' {tuple(value.shape)} does not fit this base model")
        with torch.no_grad():
            params[name].copy_(value)
    set_trainable(base, lambda n: n in saved)
    return base
