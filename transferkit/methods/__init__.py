"""Method registry: one module per adaptation method.

Contract (DESIGN.md "Contracts"): a method registers a name, a typed config
(a `MethodConfig` subclass) and three functions:

    apply(model, cfg) -> model     freeze / wrap; afterwards exactly the intended
                                   parameters have requires_grad=True
    save(model, adapter_dir)       write what `load` needs (PEFT format where possible)
    load(base, adapter_dir) -> model

Adding a method is adding a module that calls `register(...)` and importing
it at the bottom of this file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch

from ..config import MethodConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    apply: Callable[[torch.nn.Module, MethodConfig], torch.nn.Module]
    save: Callable[[torch.nn.Module, Path], None]
    load: Callable[[torch.nn.Module, Path], torch.nn.Module]
    summary: str
    tasks: tuple[str, ...] = ("causal-lm", "classification")   # what it can train; checked at config time
    quantize_base: bool = False                                # load the base in 4-bit NF4 (QLoRA)
    packable: bool = True             # sequences may share a row (not where virtual tokens precede every sequence)
    # Optional capabilities; None where the method has none.
    param_groups: Callable[[torch.nn.Module, MethodConfig, float], list[dict]] | None = None
    disabled: Callable[[torch.nn.Module], ContextManager] | None = None   # yields a model acting as the base
    merge: Callable[[torch.nn.Module], torch.nn.Module] | None = None     # fold into the base weights
    closed_form: Callable[[torch.nn.Module, MethodConfig], int | None] | None = None  # trainable count by formula


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        raise ConfigError(
            f"unknown method '{name}' in config key 'method.name'{suggestion} Known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def format_trainable(trainable: int, total: int) -> str:
    """The line `peft`'s `print_trainable_parameters` prints."""
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def check_task(method: Method, task: str) -> None:
    if task not in method.tasks:
        raise ConfigError(f"method '{method.name}' cannot train a {task} task (it serves: {', '.join(method.tasks)}); "
                          f"choose another method.name")


# Each module registers itself on import.
from . import adapter, freeze, full, ia3, lora, prefix, probe, prompt, qlora  # noqa: E402,F401
