"""Prefix tuning (Li & Liang 2021, arXiv:2101.00190) through `peft`: learned
key/value vectors prepended at every layer. Without the reparameterisation MLP
the trainable parameters are num_virtual_tokens × layers × 2 × (kv heads × head dim)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import MethodConfig, opt
from .peft_common import PEFT_FUNCTIONS, wrap_prompt_learning
from .registry import Defaults, Method, register


@dataclass
class PrefixMethodConfig(MethodConfig):
    num_virtual_tokens: int = opt(20, "prefix length per layer", gt=0)


def apply(model, cfg: PrefixMethodConfig, task: str):
    from peft import PrefixTuningConfig

    return wrap_prompt_learning(model, task, PrefixTuningConfig, cfg.num_virtual_tokens)


def closed_form(model, cfg: PrefixMethodConfig) -> int:
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return cfg.num_virtual_tokens * c.num_hidden_layers * 2 * heads * head_dim


# Defaults: lr 1e-2 (recipes/prefix.yaml; peft's prefix-tuning examples use 1e-2 without the reparametrisation MLP).
DEFAULTS = Defaults(lr=1e-2)


register(Method("prefix", PrefixMethodConfig, apply=apply, defaults=DEFAULTS, summary="learned key/value prefixes at every layer (peft)",
                closed_form=closed_form, packable=False, checkpointable=False, starts_at_base=False, **PEFT_FUNCTIONS))
