"""AdamW over the trainable parameters (in the method's parameter groups, e.g. LLRD) and its schedule."""

from __future__ import annotations

import torch

from ..errors import UserError
from ..methods import Method
from ..models.params import trainable_parameters
from ..options import MethodConfig, TrainConfig
from .schedule import lr_multiplier, warmup_steps


def build_optimizer(model: torch.nn.Module, method: Method, method_cfg: MethodConfig, train_cfg: TrainConfig,
                    steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """(AdamW, warmup + cosine schedule over `steps` optimizer steps)."""
    params = trainable_parameters(model)
    if not params:
        raise UserError(f"method '{method.name}' left no trainable parameters")
    groups = method.param_groups(model, method_cfg, train_cfg.lr) if method.param_groups else [{"params": params}]
    optimizer = torch.optim.AdamW(groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, betas=(0.9, 0.999))
    warmup = warmup_steps(steps, train_cfg.warmup_ratio)
    min_ratio = train_cfg.min_lr_ratio

    def schedule(step: int) -> float:
        return lr_multiplier(step, steps, warmup, min_ratio)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
