"""Preference objectives: a policy taught to prefer the chosen answer over the rejected one, relative to a reference.

Inputs are log-probabilities of whole answers, summed over their (completion-only) tokens, one per pair [B]:

    πc, πr   the policy's log p(chosen | prompt), log p(rejected | prompt)
    ρc, ρr   the reference model's (the base, or the SFT model DPO starts from)
    h = (πc − ρc) − (πr − ρr)          the difference of the two implicit rewards, divided by β

    sigmoid   −(1 − ε) log σ(β h) − ε log σ(−β h)
              DPO (Rafailov et al. 2023); ε > 0 is conservative DPO (cDPO, Mitchell 2023): labels flipped with
              probability ε
    ipo       (h̄ − 1/(2β))²,  h̄ = h with each log-prob divided by its answer's token count
              IPO (Azar et al. 2023), on per-token averages as its authors' reference code and TRL use

At initialisation the policy is the reference, h = 0, and the sigmoid loss is log 2 whatever ε. The optional SFT term
(`sft_weight` α) adds α · (−πc / chosen tokens), the chosen answer's mean token negative log-likelihood: RPO / "DPO +
NLL" (Pang et al. 2024), against DPO's known drift of lowering the chosen answer's likelihood on small data.

Rewards, logged as TRL does: β (πc − ρc) and β (πr − ρr); the reward accuracy is the share of pairs whose chosen
reward is the higher one, the margin their mean difference. (The preference accuracy the runs are judged by is the
share of pairs whose chosen answer has the higher log-probability, πc > πr: what the model would pick, measured alike
for the base, which has no reward.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("sigmoid", "ipo")


@dataclass(frozen=True)
class PairLogProbs:
    """Summed answer log-probabilities of a batch of pairs and the answers' token counts, each [B]."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def take(self, index: torch.Tensor) -> PairLogProbs:
        """The pairs at `index` (a slice of the data)."""
        return PairLogProbs(self.chosen[index], self.rejected[index], self.chosen_tokens[index],
                            self.rejected_tokens[index])


@dataclass(frozen=True)
class PreferenceLoss:
    """Per-pair loss [B] and what is logged beside it."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor      # β (πc − ρc)  [B]
    rejected_rewards: torch.Tensor    # β (πr − ρr)  [B]

    def metrics(self) -> dict[str, float]:
        margin = self.chosen_rewards - self.rejected_rewards
        return {"loss": self.losses.mean().item(), "reward_accuracy": (margin > 0).float().mean().item(),
                "reward_margin": margin.mean().item(), "chosen_reward": self.chosen_rewards.mean().item(),
                "rejected_reward": self.rejected_rewards.mean().item()}


def preference_loss(policy: PairLogProbs, reference: PairLogProbs, *, loss: str = "sigmoid", beta: float = 0.1,
                    label_smoothing: float = 0.0, sft_weight: float = 0.0) -> PreferenceLoss:
    """The table above, per pair. `reference` carries no gradient (it is detached here in any case)."""
    if loss not in LOSSES:
        raise ValueError(f"unknown preference loss {loss!r}; expected one of {LOSSES}")
    ref_chosen, ref_rejected = reference.chosen.detach(), reference.rejected.detach()
    chosen_ratio = policy.chosen - ref_chosen                               # [B]
    rejected_ratio = policy.rejected - ref_rejected                         # [B]
    if loss == "sigmoid":
        logits = beta * (chosen_ratio - rejected_ratio)
        losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    else:
        mean_h = chosen_ratio / policy.chosen_tokens - rejected_ratio / policy.rejected_tokens
        losses = (mean_h - 1 / (2 * beta)) ** 2
    if sft_weight:
        losses = losses + sft_weight * (-policy.chosen / policy.chosen_tokens)
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def pair_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> PairLogProbs:
    """The answers' summed log-probabilities from one forward pass over 2B rows: the B chosen sequences, then the
    B rejected ones, labels on the answer tokens only (`data.tokenize.tokenize_preference`)."""
    from .loss import token_loss_per_row

    rows = {key: batch[key] for key in ("input_ids", "attention_mask", "labels")}   # each [2B, T]
    losses, tokens = token_loss_per_row(model, rows)                         # [2B], [2B]
    half = losses.shape[0] // 2
    return PairLogProbs(-losses[:half], -losses[half:], tokens[:half], tokens[half:])
