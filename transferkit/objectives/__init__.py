"""What a batch looks like and what loss it gives, per model task; shared by training and evaluation.

An objective returns (sum of per-unit losses, number of units, figure sums): units are
labelled tokens for causal LM, examples for classification and pairs for preference data. The loop
divides by the units of the whole optimizer step, which makes gradient
accumulation exact for all. Figure sums are further per-unit quantities summed over the batch (detached; empty
but for preference data: how many pairs the policy ranks right, the reward margin, ...); the loop logs their means.

| task / schema   | rows of a batch                                  | loss                                     |
|-----------------|--------------------------------------------------|------------------------------------------|
| causal-lm       | right-padded (or packed) sequences [B, T]        | token cross-entropy on labelled positions |
| classification  | right-padded texts [B, T], class ids [B]         | cross-entropy of the head's logits        |
| preference      | B chosen rows, then B rejected rows [2B, T]       | DPO / cDPO / IPO (+ SFT term) per pair    |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.batching import collate
from ..data.tokenize import Tokenized
from ..options import PreferenceConfig
from .loss import token_loss_sum
from .preference import PairLogProbs, pair_logprobs, preference_loss

Figures = dict[str, torch.Tensor]
LossSum = tuple[torch.Tensor, torch.Tensor, Figures]   # (Σ loss, units, figure sums)


def collate_classes(items: list[Tokenized], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-padded inputs [B, T] and class ids [B]."""
    batch = collate([Tokenized(t.input_ids, [0] * len(t.input_ids), t.where) for t in items], pad_id, device)
    batch["labels"] = torch.tensor([t.labels[0] for t in items], dtype=torch.long, device=device)
    return batch


def class_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossSum:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, classes]
    return F.cross_entropy(logits.float(), batch["labels"], reduction="sum"), torch.tensor(len(batch["labels"])), {}


def lm_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossSum:
    return (*token_loss_sum(model, batch), {})


def pair_rows(items: list[Tokenized]) -> list[Tokenized]:
    """The 2B sequences of B pairs: every prompt + chosen, then every prompt + rejected."""
    return [Tokenized(t.input_ids, t.labels, t.where) for t in items] + \
        [Tokenized(t.rejected[0], t.rejected[1], t.where) for t in items]


def collate_pairs(items: list[Tokenized], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The B chosen rows, then the B rejected rows, right-padded: input_ids, attention_mask, labels [2B, T]; and
    reference_chosen, reference_rejected [B] when every pair's reference log-probabilities are known."""
    batch = collate(pair_rows(items), pad_id, device)
    if all(t.reference is not None for t in items):
        reference = torch.tensor([t.reference for t in items], dtype=torch.float32, device=device)   # [B, 2]
        batch["reference_chosen"], batch["reference_rejected"] = reference[:, 0], reference[:, 1]
    return batch


ReferenceOf = Callable[[torch.nn.Module, dict[str, torch.Tensor]], PairLogProbs]


def cached_reference(policy: PairLogProbs, batch: dict[str, torch.Tensor]) -> PairLogProbs:
    """The reference log-probabilities `collate_pairs` put in the batch, with the policy's token counts."""
    return PairLogProbs(batch["reference_chosen"], batch["reference_rejected"], policy.chosen_tokens,
                        policy.rejected_tokens)


def pair_figures(policy: PairLogProbs, rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor) -> Figures:
    """Per-pair figures summed over the batch (detached), the loop and the evaluation divide by the pairs."""
    margin = rewards_chosen - rewards_rejected
    return {"preference_accuracy": (policy.chosen > policy.rejected).float().sum().detach(),
            "reward_accuracy": (margin > 0).float().sum(), "reward_margin": margin.sum(),
            "chosen_logp": policy.chosen.detach().sum(), "rejected_logp": policy.rejected.detach().sum()}


def preference_objective(cfg: PreferenceConfig, reference: ReferenceOf | None = None) -> Objective:
    """The preference loss of `cfg`; reference log-probabilities from the batch (cached) or, when it has none,
    from `reference(model, batch)` (the model with its method switched off)."""
    def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossSum:
        policy = pair_logprobs(model, batch)
        if "reference_chosen" in batch:
            ref = cached_reference(policy, batch)
        elif reference is not None:
            ref = reference(model, batch)
        else:
            raise ValueError("no reference log-probabilities: none cached in the batch and no reference model")
        out = preference_loss(policy, ref, loss=cfg.loss, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                              sft_weight=cfg.sft_weight)
        units = torch.tensor(len(out.losses))
        return out.losses.sum(), units, pair_figures(policy, out.chosen_rewards, out.rejected_rewards)

    return Objective(collate_pairs, loss_sum, units="pairs")


@dataclass(frozen=True)
class Objective:
    collate: Callable[[list[Tokenized], int, torch.device], dict[str, torch.Tensor]]
    loss_sum: Callable[[torch.nn.Module, dict[str, torch.Tensor]], LossSum]
    units: str = "labelled_tokens"   # what the loss is averaged over, as the training log names it


OBJECTIVES = {
    "causal-lm": Objective(collate, lm_loss_sum),
    "classification": Objective(collate_classes, class_loss_sum),
}


def objective_for(schema: str, task: str, preference: PreferenceConfig, reference: ReferenceOf | None = None
                  ) -> Objective:
    """The objective a run trains: the task's, or for preference data the preference loss."""
    return preference_objective(preference, reference) if schema == "preference" else OBJECTIVES[task]
