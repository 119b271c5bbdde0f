"""What full fine-tuning, partial freezing and the linear probe share: they
train a subset of the model's own parameters (plus a new head for
classification), and their adapter is exactly those tensors.

    adapter/trainable.safetensors   the trained tensors, by parameter name
    adapter/transferkit_method.json method name, base model type, tensor shapes
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..models.heads import task_of, underlying_model
from ..models.params import trainable_tensors, unique_parameters
from ..options import MethodConfig
from .shapes import Layout, layout

LAYER_INDEX = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")
EMBEDDING_HINTS = ("embed", "embeddings", "wte", "wpe")


def block_index(name: str) -> int | None:
    """Transformer block of a parameter name, or None (embeddings, head, final norm)."""
    match = LAYER_INDEX.search("." + name)
    return int(match.group(1)) if match else None


def num_blocks(model: torch.nn.Module) -> int:
    indices = {block_index(n) for n, _ in model.named_parameters()} - {None}
    return max(indices) + 1 if indices else 0


def model_layout(model: torch.nn.Module) -> Layout | None:
    """The parameter layout of `model` from its config alone (None for a family `shapes.py` does not know)."""
    task = task_of(model)
    if task == "causal-lm":
        return layout(model.config, task)
    return layout(model.config, task, model.config.num_labels, underlying_model(model).pooling)


def is_embedding(name: str) -> bool:
    return block_index(name) is None and any(h in name for h in EMBEDDING_HINTS)


def set_trainable(model: torch.nn.Module, predicate) -> torch.nn.Module:
    """requires_grad = predicate(name) for every parameter. Tied tensors follow
    their first name (an input embedding tied to the output head is one tensor)."""
    for name, param in unique_parameters(model):
        param.requires_grad_(bool(predicate(name)))
    return model


def save_trainable(model: torch.nn.Module, cfg: MethodConfig, adapter_dir: Path) -> None:
    """The trained tensors and, in `transferkit_method.json`, the method's name and options (what `load` needs)."""
    tensors = trainable_tensors(model)
    save_file(tensors, str(adapter_dir / "trainable.safetensors"))
    meta = {"method": cfg.name, "options": asdict(cfg), "model_type": getattr(model.config, "model_type", None),
            "shapes": {n: list(t.shape) for n, t in tensors.items()}}
    (adapter_dir / "transferkit_method.json").write_text(json.dumps(meta, indent=2))


def read_meta(adapter_dir: Path) -> dict:
    return json.loads((adapter_dir / "transferkit_method.json").read_text())


def saved_config(cls: type, adapter_dir: Path) -> MethodConfig:
    """The method config an adapter was saved with."""
    return cls(**read_meta(adapter_dir)["options"])


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
