"""Which modules a method adapts, by architecture (`config.model_type`).

One table per concern instead of one flag per module. Families not listed
fall back to every linear layer except the output head (`peft`'s "all-linear").
"""

from __future__ import annotations

import re

import torch

from ..errors import ConfigError
from ..models.heads import is_head

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "granite")

# LoRA. BERT-style encoders: every linear layer of each block (attention and MLP) at rank 8 — LoRA on the MLP
# too learns closest to full fine-tuning (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"; Schulman et
# al. 2025, "LoRA Without Regret"; QLoRA's Dettmers et al. 2023 needed every linear layer to match it), and rank 8
# keeps all-MiniLM-L6-v2's adapter under 2 % of its parameters (rank 16 would be 2.9 %). On austen-novel, mean of
# three seeds (2026-12-01): query/key/value at rank 16 trailed full fine-tuning by 2.2 points (ad hoc runs beside
# experiments/defaults.py's), every linear layer at rank 8 by 1.0 (docs/defaults.md). Decoders: the attention
# projections at rank 16 (not yet measured against every linear layer).
LORA_TARGETS = {**{t: ["q_proj", "k_proj", "v_proj", "o_proj"] for t in LLAMA_LIKE},
                "phi3": ["qkv_proj", "o_proj"], "gpt2": ["c_attn", "c_proj"],
                "bert": ["query", "key", "value", "output.dense", "intermediate.dense"]}
LORA_RANK = {"bert": 8}
DEFAULT_LORA_RANK = 16

# IA3 (Liu et al. 2022): rescale keys, values and the feed-forward input of the
# down projection; (targets, feed-forward subset).
IA3_TARGETS = {**{t: (["k_proj", "v_proj", "down_proj"], ["down_proj"]) for t in LLAMA_LIKE},
               "bert": (["key", "value", "output.dense"], ["output.dense"])}

# Bottleneck adapters sit after the output projection of each sub-layer, before
# the residual addition: (after attention, after MLP) as regexes on module names.
ADAPTER_SITES = {**{t: (r"\.self_attn\.o_proj$", r"\.mlp\.down_proj$") for t in LLAMA_LIKE},
                 "bert": (r"\.attention\.output\.dense$", r"\.layer\.\d+\.output\.dense$"),
                 "gpt2": (r"\.attn\.c_proj$", r"\.mlp\.c_proj$")}


def model_type(model: torch.nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", "")


def default_lora_targets(model: torch.nn.Module) -> list[str] | str:
    return LORA_TARGETS.get(model_type(model), "all-linear")


def default_lora_rank(model: torch.nn.Module) -> int:
    return LORA_RANK.get(model_type(model), DEFAULT_LORA_RANK)


def default_ia3_targets(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    kind = model_type(model)
    if kind not in IA3_TARGETS:
        raise ValueError(f"no default IA3 targets for model type '{kind}'; set method.target_modules")
    return IA3_TARGETS[kind]


def adapter_sites(model: torch.nn.Module) -> tuple[str, str]:
    kind = model_type(model)
    if kind not in ADAPTER_SITES:
        raise ValueError(f"no bottleneck-adapter sites known for model type '{kind}'")
    return ADAPTER_SITES[kind]


def adapted_linears(model: torch.nn.Module, targets: list[str] | str) -> list[torch.nn.Linear]:
    """The linear layers `peft` will adapt for `targets` (suffix match on module names)."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or is_head(name):
            continue
        if targets == "all-linear" or any(name == t or name.endswith("." + t) for t in targets):
            found.append(module)
    return found


def matching_modules(model: torch.nn.Module, pattern: str) -> list[tuple[str, torch.nn.Module]]:
    regex = re.compile(pattern)
    return [(n, m) for n, m in model.named_modules() if regex.search(n)]


def check_target_modules(model: torch.nn.Module, method_cfg) -> None:
    """Before anything is written: every name in `method.target_modules` (and IA3's `feedforward_modules`) matches
    a linear layer of this model, as peft matches them (the whole name or a dotted suffix); else one ConfigError
    naming the layers the model has, instead of a library traceback after the run directory exists."""
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not is_head(n)]
    for key in ("target_modules", "feedforward_modules"):
        names = getattr(method_cfg, key, None) or []
        missing = [t for t in names if not any(n == t or n.endswith("." + t) for n in linear)]
        if missing:
            have = sorted({n.rsplit(".", 1)[-1] for n in linear})
            raise ConfigError(f"config key 'method.{key}': {', '.join(missing)} matches no linear layer of this "
                              f"{model_type(model) or 'model'}; its linear layers are named {', '.join(have)} "
                              f"(a dotted suffix such as 'attention.output.dense' also works)")
    targets = getattr(method_cfg, "target_modules", None) or []
    outside = set(getattr(method_cfg, "feedforward_modules", None) or []) - set(targets)
    if outside and targets:
        raise ConfigError(f"config key 'method.feedforward_modules': {', '.join(sorted(outside))} must also be in "
                          f"method.target_modules")
