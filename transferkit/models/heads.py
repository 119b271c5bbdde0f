"""What a loaded model is for, read from its structure (never from attributes we set on it).

A sequence classifier (`classifier.py`) has a new head named `classifier`; a causal LM has `lm_head`. peft wrappers forward attribute lookups to the model inside, so the same test works on a
wrapped model; a linear probe exposes its classifier through `get_base_model()`, as peft does.
"""

from __future__ import annotations

import torch

from ..runtime import underlying_model

HEAD_NAMES = ("lm_head", "classifier")
TASK_HEAD_NAMES = ("classifier",)  # a sequence classifier's new head


def task_head_name(model: torch.nn.Module) -> str | None:
    """Attribute name of a sequence classifier's task head (None for a causal LM)."""
    inner = underlying_model(model)
    return next((n for n in TASK_HEAD_NAMES if isinstance(getattr(inner, n, None), torch.nn.Module)), None)


def task_of(model: torch.nn.Module) -> str:
    """"classification" for a sequence classifier, else "causal-lm"."""
    return "classification" if task_head_name(model) is not None else "causal-lm"


def uses_virtual_tokens(model: torch.nn.Module) -> bool:
    """Prompt and prefix tuning: peft injects virtual tokens in its own forward, before every sequence."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated transformer blocks: the modules of the classes it names in `_no_split_modules`
    (transformers' unit of device placement; FSDP's unit of sharding). [] when it names none."""
    names = set(getattr(underlying_model(model), "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def is_head(module_name: str) -> bool:
    """Whether a module name is an output or task head (never adapted by LoRA or IA3)."""
    return module_name.split(".")[-1] in HEAD_NAMES
