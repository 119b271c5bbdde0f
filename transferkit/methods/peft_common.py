"""What every `peft`-backed method shares: task type, the new head as a module to save, save, load, off
switch, merge."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..models.heads import task_head_name
from ..options import MethodConfig


def peft_task_type(task: str):
    from peft import TaskType

    return TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM


def classifier_modules(model: torch.nn.Module, task: str) -> list[str] | None:
    """Names of a fresh classification head, which must train and be saved with the adapter."""
    name = task_head_name(model) if task == "classification" else None
    return [name] if name else None


def wrap(model: torch.nn.Module, peft_config) -> torch.nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, peft_config)


def wrap_prompt_learning(model: torch.nn.Module, task: str, config_cls, num_virtual_tokens: int) -> torch.nn.Module:
    """Prompt and prefix tuning: same construction, different peft config class."""
    config = config_cls(num_virtual_tokens=num_virtual_tokens, task_type=peft_task_type(task))
    if classifier_modules(model, task):
        config.modules_to_save = classifier_modules(model, task)
    return wrap(model, config)


def save(model: torch.nn.Module, cfg: MethodConfig, adapter_dir: Path) -> None:
    model.save_pretrained(str(adapter_dir), safe_serialization=True)  # peft's adapter_config.json holds cfg


def load(base: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    """The adapter on `base`, its parameters marked trainable as after `apply`, so that the loaded model's weight
    storage can match training's (frozen weights in bf16, trained ones fp32)."""
    from peft import PeftConfig, PeftModel

    prompt_learning = PeftConfig.from_pretrained(str(adapter_dir)).is_prompt_learning
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=not prompt_learning)
    if prompt_learning:  # peft refuses is_trainable here: mark what `apply` trained, the soft prompt and a new head
        for name, param in model.named_parameters():
            param.requires_grad_("prompt_encoder" in name or "modules_to_save" in name)
    return model


@contextlib.contextmanager
def disabled(model: torch.nn.Module):
    """Yields a model that behaves as the base. Prompt-learning methods leave the base
    untouched, so it is the base itself (peft's own switch fails for them on classifiers)."""
    if getattr(model.active_peft_config, "is_prompt_learning", False):
        yield model.get_base_model()
        return
    with model.disable_adapter():
        yield model


def merge(model: torch.nn.Module) -> torch.nn.Module:
    return model.merge_and_unload()


# The registry fields every peft-backed method shares.
PEFT_FUNCTIONS = {"save": save, "load": load, "disabled": disabled, "peft_format": True, "libraries": ("peft",)}
