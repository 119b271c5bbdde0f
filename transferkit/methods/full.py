"""Full fine-tuning, with optional layer-wise learning-rate decay (LLRD).

LLRD (Howard & Ruder 2018, ULMFiT "discriminative fine-tuning"; Clark et al.
2020): lower layers hold more general features, so they move less. With L
blocks and decay γ, a parameter at depth δ from the top gets lr · γ^δ:

    head, final norm (δ = 0)  →  block L−1 (δ = 1)  →  …  →  block 0 (δ = L)  →  embeddings (δ = L + 1)

An input embedding tied to the output head is one tensor; it sits with the
embeddings (δ = L + 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import MethodConfig, opt
from .registry import HEAD_LR, Defaults, Method, register
from .selective import (block_index, is_embedding, load_trainable, model_layout, num_blocks, save_trainable,
                        set_trainable)


@dataclass
class FullMethodConfig(MethodConfig):
    llrd: float = opt(1.0, "layer-wise lr decay γ: block at depth δ from the top trains at lr·γ^δ (1.0: off)", gt=0, le=1)


def depth_from_top(name: str, blocks: int) -> int:
    index = block_index(name)
    if index is not None:
        return blocks - index
    return blocks + 1 if is_embedding(name) else 0


def param_groups(model: torch.nn.Module, cfg: FullMethodConfig, lr: float) -> list[dict]:
    blocks = num_blocks(model)
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(depth_from_top(name, blocks), []).append(param)
    return [{"params": ps, "lr": lr * cfg.llrd ** depth, "depth": depth} for depth, ps in sorted(groups.items())]


def apply(model, cfg: FullMethodConfig, task: str):
    return set_trainable(model, lambda name: True)


def closed_form(model, cfg) -> int | None:
    """Every parameter, by arithmetic on the config (`shapes.py`)."""
    parts = model_layout(model)
    return None if parts is None else parts.total


# Defaults: lr 1e-4, as recipes/full.yaml trained SmolLM2-135M on the quickstart task; BERT (Devlin et al. 2019)
# fine-tunes at 2e-5–5e-5, small models tolerate more. A new classification head at HEAD_LR (its own group,
# `train.head_lr`; registry.py says why). Checked by experiments/defaults.py.
DEFAULTS = Defaults(lr=1e-4, head_lr=HEAD_LR)


register(Method("full", FullMethodConfig, apply=apply, save=save_trainable, load=load_trainable,
                defaults=DEFAULTS, summary="every weight trains; optional layer-wise lr decay", separate_head=False,
                trains_base_weights=True,
                param_groups=param_groups, closed_form=closed_form))
