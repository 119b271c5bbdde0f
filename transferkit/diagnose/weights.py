"""Weight change: where training moved the weights, and how many directions the move used.

For every weight matrix W inside the numbered blocks (attention and MLP projections of layer i; embeddings and
heads are left out) and its update ΔW = W_tuned − W_base:

    relative change   ‖ΔW‖_F / ‖W‖_F (per block: √Σ‖ΔW‖² / √Σ‖W‖² over its matrices)
    effective rank    exp(H(p)), p_i = σ_i / Σσ_j over ΔW's singular values (Roy & Vetterli 2007): r for r
                      equal singular values, less when a few dominate; 0 for ΔW = 0
    rank for 90 %     the fewest singular values holding 90 % of ‖ΔW‖²_F (the spectrum measure of Biderman
                      et al. 2024, "LoRA Learns Less and Forgets Less", arXiv:2405.09673, who find full
                      fine-tuning's updates 10–100× higher-rank than LoRA's)

LoRA's ΔW = s · B A (B: [d, r], A: [r, k], s = α / r) is never formed: with B = Q_B R_B and Aᵀ = Q_A R_A (thin QR),
ΔW = Q_B (s R_B R_Aᵀ) Q_Aᵀ, whose singular values are those of the r × r matrix s R_B R_Aᵀ. Every other method's
ΔW is the tuned model's weight (merged into the base where the method merges: DoRA, IA3) minus the base's;
methods that add parameters beside frozen weights (adapters, prefix and prompt tuning, the probe) change none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..runtime import plain_name, underlying_model

LAYER = re.compile(r"\.(?:layers?|h|blocks?)\.(\d+)\.")
ENERGY = 0.90   # rank_90: singular values holding this share of ‖ΔW‖²


@dataclass(frozen=True)
class Change:
    name: str               # the base model's parameter name
    layer: int              # block index
    module: str             # e.g. q_proj, query, dense
    relative: float         # ‖ΔW‖_F / ‖W‖_F
    delta_norm: float       # ‖ΔW‖_F
    base_norm: float        # ‖W‖_F
    effective_rank: float
    rank_90: int
    shape: tuple[int, int]


def spectrum(singular: torch.Tensor) -> tuple[float, int]:
    """(effective rank, rank for 90 % of the energy) of a matrix from its singular values."""
    s = singular.double().clamp(min=0)
    if float(s.sum()) <= 0:
        return 0.0, 0
    p = s / s.sum()
    entropy = -float((p[p > 0] * p[p > 0].log()).sum())
    energy = (s ** 2).cumsum(0) / (s ** 2).sum()
    return float(np.exp(entropy)), int((energy < ENERGY - 1e-12).sum()) + 1


def lora_singular_values(b: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
    """Singular values of scale · B A from the factors (module docstring), without the d × k product."""
    q_b, r_b = torch.linalg.qr(b.double())       # b: [d, r]
    q_a, r_a = torch.linalg.qr(a.double().T)     # aᵀ: [k, r]
    return torch.linalg.svdvals(scale * r_b @ r_a.T)


def lora_updates(tuned: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{base weight name: singular values of its update} for every plain LoRA layer (not DoRA, whose update also
    rescales columns), from its factors."""
    found = {}
    for name, module in underlying_model(tuned).named_modules():
        a, b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(a, torch.nn.ModuleDict) or not a:
            continue
        (adapter,) = module.active_adapters
        if getattr(module, "use_dora", {}).get(adapter):
            return {}
        found[plain_name(name) + ".weight"] = lora_singular_values(b[adapter].weight.detach(), a[adapter].weight.detach(),
                                                                   float(module.scaling[adapter]))
    return found


def weight_changes(base: torch.nn.Module, tuned: torch.nn.Module) -> list[Change]:
    """Every block matrix's change from `base` to `tuned` (module docstring). `tuned` is read, never changed: a
    merge happens on the caller's copy (`diagnose.diagnose`)."""
    factors = lora_updates(tuned)
    tuned_weights = {plain_name(n): p.detach() for n, p in underlying_model(tuned).named_parameters()}
    changes = []
    for name, w in base.named_parameters():
        layer = LAYER.search(name)
        if w.dim() != 2 or layer is None or (name not in factors and name not in tuned_weights):
            continue
        if name not in factors and (tuned_weights[name].shape != w.shape or not tuned_weights[name].is_floating_point()):
            continue  # a 4-bit packed weight (QLoRA's base): quantized, not trained
        if name in factors:
            singular = factors[name]
            norm = float(singular.square().sum().sqrt())
        else:
            delta = tuned_weights[name].double() - w.detach().double()
            singular, norm = torch.linalg.svdvals(delta), float(delta.norm())
        effective, rank_90 = spectrum(singular)
        base_norm = float(w.detach().double().norm())
        changes.append(Change(name, int(layer.group(1)), name.rsplit(".", 2)[-2], norm / max(base_norm, 1e-30), norm,
                              base_norm, effective, rank_90, tuple(w.shape)))
    return changes


def by_layer(changes: list[Change]) -> list[dict]:
    """Per block, in block order: how far the block moved, √Σ‖ΔW‖² / √Σ‖W‖² over its matrices (untouched ones
    count as zero change), how many of its matrices changed, and the median effective rank and rank_90 of those
    that did (0 when none did)."""
    layers: dict[int, list[Change]] = {}
    for c in changes:
        layers.setdefault(c.layer, []).append(c)
    rows = []
    for i, cs in sorted(layers.items()):
        moved = [c for c in cs if c.delta_norm > 0]
        rows.append({"layer": i, "relative": float(np.sqrt(sum(c.delta_norm ** 2 for c in cs)) /
                                                   max(np.sqrt(sum(c.base_norm ** 2 for c in cs)), 1e-30)),
                     "changed": len(moved), "matrices": len(cs),
                     "effective_rank": float(np.median([c.effective_rank for c in moved])) if moved else 0.0,
                     "rank_90": int(np.median([c.rank_90 for c in moved])) if moved else 0})
    return rows
