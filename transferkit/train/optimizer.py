"""AdamW over the trainable parameters (in the method's parameter groups, e.g. LLRD) and its schedule."""

from __future__ import annotations

import torch

from ..errors import UserError
from ..methods import Method
from ..models.heads import task_head_name
from ..models.params import trainable_parameters
from ..options import MethodConfig, TrainConfig
from ..runtime import underlying_model
from .schedule import lr_multiplier, warmup_steps


def build_optimizer(model: torch.nn.Module, method: Method, method_cfg: MethodConfig, train_cfg: TrainConfig,
                    steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """(AdamW, warmup + cosine schedule over `steps` optimizer steps)."""
    params = trainable_parameters(model)
    if not params:
        raise UserError(f"method '{method.name}' left no trainable parameters")
    groups = method.param_groups(model, method_cfg, train_cfg.lr) if method.param_groups else [{"params": params}]
    if train_cfg.head_lr is not None:
        groups = with_head_group(groups, task_head_parameters(model), train_cfg.head_lr)
    optimizer = torch.optim.AdamW(groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, betas=(0.9, 0.999))
    warmup = warmup_steps(steps, train_cfg.warmup_ratio)
    min_ratio = train_cfg.min_lr_ratio

    def schedule(step: int) -> float:
        return lr_multiplier(step, steps, warmup, min_ratio)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def task_head_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable parameters of a classifier's task head (under peft: its trained copy); [] for a causal LM."""
    name = task_head_name(model)
    if name is None:
        return []
    return [p for p in getattr(underlying_model(model), name).parameters() if p.requires_grad]


def with_head_group(groups: list[dict], head: list[torch.nn.Parameter], head_lr: float) -> list[dict]:
    """`groups` with the head's parameters moved into a group of their own at `head_lr` (the schedule scales
    every group's peak alike). Groups left empty are dropped."""
    ids = {id(p) for p in head}
    rest = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
    return [g for g in rest if g["params"]] + ([{"params": head, "lr": head_lr}] if head else [])
