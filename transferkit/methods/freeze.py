"""Partial fine-tuning: embeddings and the lowest blocks frozen, the rest trains.

Give `freeze_bottom: N` (the lowest N blocks frozen) or `train_top: K` (only the
top K blocks, the final norm and the head train). Embeddings are always frozen
here; a head tied to them (SmolLM2) stays frozen with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError
from ..options import MethodConfig, opt
from .registry import HEAD_LR, Defaults, Method, register
from .selective import (block_index, is_embedding, load_trainable, model_layout, num_blocks, save_trainable,
                        set_trainable)


@dataclass
class FreezeMethodConfig(MethodConfig):
    freeze_bottom: Optional[int] = opt(None, "freeze the embeddings and the lowest N blocks", ge=0)
    train_top: Optional[int] = opt(2, "train only the top K blocks, final norm and head (used when freeze_bottom is not set)", gt=0)


def first_trained_block(blocks: int, cfg: FreezeMethodConfig) -> int:
    first = cfg.freeze_bottom if cfg.freeze_bottom is not None else blocks - cfg.train_top
    if not 0 <= first <= blocks:
        raise ConfigError(f"method.freeze_bottom/train_top leave {blocks - first} of the model's {blocks} blocks "
                          f"trainable; choose a value within 0..{blocks}")
    return first


def trains(name: str, first: int) -> bool:
    index = block_index(name)
    if index is not None:
        return index >= first
    return not is_embedding(name)  # final norm, head, pooler


def apply(model, cfg: FreezeMethodConfig, task: str):
    first = first_trained_block(num_blocks(model), cfg)
    return set_trainable(model, lambda name: trains(name, first))


def closed_form(model, cfg: FreezeMethodConfig) -> int | None:
    """The top blocks, the final norm (or pooler) and an untied head, by arithmetic on the config (`shapes.py`)."""
    parts = model_layout(model)
    if parts is None:
        return None
    first = first_trained_block(parts.blocks, cfg)
    return (parts.blocks - first) * parts.block + parts.final + parts.head


# Defaults: lr 6e-4, between full fine-tuning's 1e-4 and the adapters' 1e-3, for the fewer weights that train: the
# best of 6.7e-5 / 2e-4 / 6e-4 on both Austen tasks with MiniLM when 2e-4 was the default (austen-novel 72.7 % against
# 70.0 % at 2e-4, austen-speech 97.3 % against 96.0 %; the head at 1e-3 then: docs/defaults.md of 2026-11-30, in
# git history), and the best of 2e-4 / 6e-4 / 1.8e-3 for SmolLM2 on the chitchat-reply instruction task (test loss
# 3.630 against 3.650 at 1.8e-3, 2026-12-07). A decoder classifier's top blocks train at 1.8e-3: they must turn the
# last token's next-token features into the class, and on both Austen tasks SmolLM2 scored 4.3 and 6.9 points more
# at 1.8e-3 than at 6e-4 (austen-speech 94.3 against 90.0 %, austen-novel 64.2 against 57.3 %; 5.4e-3: 95.0 and
# 61.0 %; 2026-12-07, bf16). experiments/defaults.py checks both (docs/defaults.md).
# A classifier's new head at HEAD_LR (registry.py).
DEFAULTS = Defaults(lr=6e-4, head_lr=HEAD_LR, lr_by_pair=(("decoder", "classification", 1.8e-3),))


register(Method("freeze", FreezeMethodConfig, apply=apply, save=save_trainable, load=load_trainable,
                defaults=DEFAULTS, summary="embeddings and lower blocks frozen, top blocks train", separate_head=False,
                trains_base_weights=True,
                closed_form=closed_form))
