"""Bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al.
2021, arXiv:2005.00247), a small module of ours with the registry contract.

Each adapter sits on the output h of a sub-layer's output projection, before
the residual addition:

    h ← h + W_up · f(W_down · h + b_down) + b_up      W_down: [r, d], W_up: [d, r]

W_up and b_up start at zero, so the adapted model starts equal to the base.
`houlsby` inserts one after attention and one after the MLP of every block;
`pfeiffer` only after the MLP. Parameters per insertion: 2·r·d + r + d.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..models.heads import task_head_name, task_of
from ..options import MethodConfig, opt
from .registry import HEAD_LR, Defaults, Method, register
from .selective import load_trainable, save_trainable, saved_config
from .targets import adapter_sites, matching_modules

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass
class AdapterMethodConfig(MethodConfig):
    r: int = opt(16, "bottleneck width", gt=0)
    style: Literal["houlsby", "pfeiffer"] = opt("houlsby", "houlsby: after attention and MLP; pfeiffer: after MLP only")
    activation: Literal["relu", "gelu", "silu", "tanh"] = opt("relu", "nonlinearity inside the bottleneck")


class Bottleneck(nn.Module):
    def __init__(self, dim: int, r: int, activation: str):
        super().__init__()
        self.down = nn.Linear(dim, r)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(r, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: [..., d]
        return h + self.up(self.act(self.down(h)))


class WithAdapter(nn.Module):
    """A frozen output projection followed by a trainable bottleneck."""

    def __init__(self, projection: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.projection = projection
        self.adapter = adapter
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.projection(x)
        return self.adapter(h) if self.enabled else h


def sites(model: nn.Module, style: str) -> list[tuple[str, nn.Module]]:
    after_attention, after_mlp = adapter_sites(model)
    found = matching_modules(model, after_mlp)
    if style == "houlsby":
        found += matching_modules(model, after_attention)
    return sorted(found, key=lambda item: item[0])


def apply(model: nn.Module, cfg: AdapterMethodConfig, task: str) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    for name, projection in sites(model, cfg.style):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        weight = projection.weight
        adapter = Bottleneck(projection.out_features, cfg.r, cfg.activation).to(device=weight.device)
        setattr(parent, child, WithAdapter(projection, adapter))
    if task == "classification":
        getattr(model, task_head_name(model)).requires_grad_(True)  # a new task head always trains
    return model


def load(base: nn.Module, adapter_dir) -> nn.Module:
    return load_trainable(apply(base, saved_config(AdapterMethodConfig, adapter_dir), task_of(base)), adapter_dir)


@contextlib.contextmanager
def disabled(model: nn.Module):
    """Bottleneck adapters off (a trained classification head stays: it has no base to return to)."""
    wrapped = [m for m in model.modules() if isinstance(m, WithAdapter)]
    for m in wrapped:
        m.enabled = False
    try:
        yield model
    finally:
        for m in wrapped:
            m.enabled = True


def closed_form(model: nn.Module, cfg: AdapterMethodConfig) -> int:
    return sum(2 * cfg.r * m.out_features + cfg.r + m.out_features for _, m in sites(model, cfg.style))


# Defaults: lr 1e-3 (recipes/adapter.yaml; Houlsby et al. 2019 searched 1e-4–1e-3, higher for small data); a
# classifier's new head at HEAD_LR (registry.py). Checked by experiments/defaults.py.
DEFAULTS = Defaults(lr=1e-3, head_lr=HEAD_LR)


register(Method("adapter", AdapterMethodConfig, apply=apply, save=save_trainable, load=load, disabled=disabled,
                defaults=DEFAULTS, summary="bottleneck adapters after attention/MLP (Houlsby, Pfeiffer)", closed_form=closed_form))
