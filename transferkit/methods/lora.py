"""LoRA (Hu et al. 2021, arXiv:2106.09685) through `peft`.

W' = W + (alpha / r) · B A with A: [r, k] (Kaiming init), B: [d, r] (zeros),
so the adapted model starts equal to the base. Trainable parameters per
adapted d×k matrix: r · (d + k).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import MethodConfig, opt
from . import Method, register

# Attention projections by architecture (`config.model_type`). Where a family
# is not listed, every linear layer except the output head is adapted
# (`peft`'s "all-linear").
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "bert": ["query", "key", "value"],
}


@dataclass
class LoraMethodConfig(MethodConfig):
    r: int = opt(16, "LoRA rank", gt=0)
    alpha: float = opt(32.0, "LoRA scaling numerator: the update is scaled by alpha / r", gt=0)
    dropout: float = opt(0.05, "dropout on the LoRA input", ge=0, le=1)
    target_modules: list[str] = opt(
        [], "module names to adapt, e.g. [q_proj, v_proj]; empty: a default per architecture")


def default_targets(model: torch.nn.Module) -> list[str] | str:
    return DEFAULT_TARGETS.get(getattr(model.config, "model_type", ""), "all-linear")


def peft_lora_config(model: torch.nn.Module, cfg: LoraMethodConfig):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules or default_targets(model),
        task_type=TaskType.CAUSAL_LM,
    )


def apply(model: torch.nn.Module, cfg: LoraMethodConfig) -> torch.nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, peft_lora_config(model, cfg))


def save(model: torch.nn.Module, adapter_dir: Path) -> None:
    model.save_pretrained(str(adapter_dir), safe_serialization=True)


def load(base: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir))


register(Method("lora", LoraMethodConfig, apply, save, load, summary="low-rank updates on chosen linear layers (peft)"))
