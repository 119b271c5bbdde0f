"""LoRA (Hu et al. 2021, arXiv:2106.09685) and its variants, through `peft`.

W' = W + (alpha / r) · B A with A: [r, k] (Kaiming init), B: [d, r] (zeros),
so the adapted model starts equal to the base. Trainable parameters per
adapted d×k matrix: r · (d + k).
- `rslora` (Kalajdzievski 2023, arXiv:2312.03732): scale alpha / sqrt(r), stable at high rank.
- `dora` (Liu et al. 2024, arXiv:2402.09353): W' = m · (W + BA) / ||W + BA||_col, adding a
  magnitude vector of d parameters per matrix; the norm computed without weight-sized temporaries
  (`dora.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from ..options import MethodConfig, opt
from .peft_common import PEFT_FUNCTIONS, classifier_modules, load, merge, peft_task_type, wrap
from .registry import HEAD_LR, Defaults, Method, register
from .targets import adapted_linears, default_lora_rank, default_lora_targets


@dataclass
class LoraMethodConfig(MethodConfig):
    r: Optional[int] = opt(None, "LoRA rank; null: the architecture's default (8 on BERT-style encoders, 16 "
                                 "elsewhere; methods/targets.py)", gt=0)
    alpha: Optional[float] = opt(None, "LoRA scaling numerator: the update is scaled by alpha / r; null: 2 × r", gt=0)
    dropout: float = opt(0.0, "dropout on the LoRA input (peft's default 0; on CPU its random masks cost ~12 % of a step)",
                         ge=0, le=1)
    target_modules: list[str] = opt(
        [], "module names to adapt, e.g. [q_proj, v_proj]; empty: a default per architecture")


@dataclass(frozen=True)
class LoraShape:
    """What a LoRA config means on one model once its nulls are resolved."""

    targets: list[str] | str
    r: int
    alpha: float


def lora_shape(model: torch.nn.Module, cfg: LoraMethodConfig) -> LoraShape:
    """The config's targets and rank, else the architecture's defaults (targets.py); alpha, else 2r: α = 2r is
    the scaling LoRA's own experiments and most recipes use (LLaMA-Factory's default too), so the update's scale
    α/r = 2 stays put when only the rank is changed."""
    r = cfg.r or default_lora_rank(model)
    return LoraShape(cfg.target_modules or default_lora_targets(model), r, cfg.alpha or 2.0 * r)


def resolved(model: torch.nn.Module, cfg: LoraMethodConfig) -> LoraMethodConfig:
    """`cfg` with the rank, alpha and targets `lora_shape` gives (peft's "all-linear" stays an empty list), so that
    a run's config.yaml names them."""
    shape = lora_shape(model, cfg)
    targets = cfg.target_modules or ([] if isinstance(shape.targets, str) else list(shape.targets))
    return dataclasses.replace(cfg, r=shape.r, alpha=shape.alpha, target_modules=targets)


def peft_lora_config(model: torch.nn.Module, cfg: LoraMethodConfig, task: str, *, use_dora: bool = False,
                     use_rslora: bool = False):
    from peft import LoraConfig

    shape = lora_shape(model, cfg)
    return LoraConfig(
        r=shape.r, lora_alpha=shape.alpha, lora_dropout=cfg.dropout, target_modules=shape.targets,
        task_type=peft_task_type(task), modules_to_save=classifier_modules(model, task),
        use_dora=use_dora, use_rslora=use_rslora,
    )


def lora_closed_form(model: torch.nn.Module, cfg: LoraMethodConfig, *, dora: bool = False) -> int:
    """Σ over adapted d×k matrices of r(d + k) (+ d magnitudes for DoRA)."""
    shape = lora_shape(model, cfg)
    total = 0
    for linear in adapted_linears(model, shape.targets):
        d, k = linear.out_features, linear.in_features
        total += shape.r * (d + k) + (d if dora else 0)
    return total


# Defaults: lr 1e-3, ten times full fine-tuning's 1e-4: LoRA's best learning rate is about an order of magnitude
# above full fine-tuning's (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"; Schulman et al. 2025, "LoRA
# Without Regret"). A classifier's new head at HEAD_LR
# (registry.py). Shared by every LoRA variant and QLoRA. Checked by experiments/defaults.py. Ad hoc runs on
# austen-novel (MiniLM, every linear layer at rank 8, three seeds, 2026-12-01) scored 72.2 % at 2e-3 against
# 71.1 % at 1e-3; not adopted for encoders (1e-3 is within 1 point of the best there).
# A decoder classifier (attention projections at r = 16, targets.py) trains at 3e-3, ten times the 3e-4 where
# SmolLM2's full fine-tuning does best on austen-speech: at 1e-3 LoRA trailed full fine-tuning by 1.6 points over
# three seeds on austen-novel (69.5 against 71.1 %), at 3e-3 by 0.3 (70.8 %), and on austen-speech it matches it
# (96.8 against 96.7 %; 2026-12-07, bf16). 9e-3 is past the edge: austen-speech fell to chance (50.0 %).
# A decoder on instruction data trains at 3e-3 too: SmolLM2 on chitchat-reply reached test loss 3.415 at 3e-3
# against 3.428 at 1e-3 (perplexity 1.3 % higher) and 3.674 at 9e-3 (2026-12-07, bf16). Plain text (schema lm) and
# preference data (DPO, whose recipe sets its own rate) keep 1e-3: not measured.
DEFAULTS = Defaults(lr=1e-3, head_lr=HEAD_LR, lr_by_pair=(("decoder", "classification", 3e-3),
                                                        ("decoder", "instruction", 3e-3)))


def lean_dora(model: torch.nn.Module) -> torch.nn.Module:
    """DoRA's layers computing their norm without weight-sized temporaries (`dora.py`; imports peft)."""
    from .dora import lean_dora as swap

    return swap(model)


def load_dora(base: torch.nn.Module, adapter_dir) -> torch.nn.Module:
    return lean_dora(load(base, adapter_dir))


def _variant(name: str, summary: str, **flags) -> Method:
    dora = flags.get("use_dora", False)
    after = lean_dora if dora else (lambda model: model)
    return Method(
        name, LoraMethodConfig,
        apply=lambda model, cfg, task: after(wrap(model, peft_lora_config(model, cfg, task, **flags))),
        summary=summary, defaults=DEFAULTS, merge=merge,
        closed_form=lambda model, cfg: lora_closed_form(model, cfg, dora=dora), resolve=resolved,
        **{**PEFT_FUNCTIONS, **({"load": load_dora} if dora else {})},
    )


register(_variant("lora", "low-rank updates BA on chosen linear layers (peft)"))
register(_variant("rslora", "LoRA scaled by alpha/sqrt(r), stable at high rank (peft)", use_rslora=True))
register(_variant("dora", "LoRA on the direction plus a learned magnitude per column (peft)", use_dora=True))
