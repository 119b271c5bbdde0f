"""Prompt tuning (Lester et al. 2021, arXiv:2104.08691) through `peft`:
`num_virtual_tokens` trainable embeddings prepended to the input; the model is
untouched. Trainable parameters: num_virtual_tokens × hidden size."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import MethodConfig, opt
from .peft_common import PEFT_FUNCTIONS, wrap_prompt_learning
from .registry import Defaults, Method, register


@dataclass
class PromptMethodConfig(MethodConfig):
    num_virtual_tokens: int = opt(20, "length of the learned soft prompt", gt=0)


def apply(model, cfg: PromptMethodConfig, task: str):
    from peft import PromptTuningConfig

    return wrap_prompt_learning(model, task, PromptTuningConfig, cfg.num_virtual_tokens)


def closed_form(model, cfg: PromptMethodConfig) -> int:
    return cfg.num_virtual_tokens * model.config.hidden_size


# Defaults: lr 3e-2 (recipes/prompt.yaml; peft's prompt-tuning examples use 3e-2 with AdamW, Lester et al. 2021 used
# 0.3 with Adafactor): a soft prompt needs large steps.
DEFAULTS = Defaults(lr=3e-2)


register(Method("prompt", PromptMethodConfig, apply=apply, defaults=DEFAULTS, summary="a learned soft prompt of virtual tokens (peft)",
                closed_form=closed_form, packable=False, starts_at_base=False, **PEFT_FUNCTIONS))
